use super::*;

#[test]
fn ipv4_helpers() {
    assert_eq!(ipv4("10.0.0.1"), Some(0x0a000001));
    assert_eq!(ipv4("10.0.0.256"), None);
    assert_eq!(ipv4("10.0.0"), None);
    assert_eq!(ipv4(" 10.0.0.1"), None);
    assert_eq!(netmask_prefix(ipv4("255.255.255.0").unwrap()), Some(24));
    assert_eq!(netmask_prefix(ipv4("255.0.255.0").unwrap()), None);
    assert_eq!(netmask_prefix(0), Some(0));
    let s = Subnet::new(ipv4("192.168.1.77").unwrap(), 24);
    assert_eq!(s.cidr(), "192.168.1.0/24");
    assert!(s.in_range(ipv4("192.168.1.1").unwrap()));
    assert!(!s.in_range(ipv4("192.168.1.0").unwrap()));
    assert!(!s.in_range(ipv4("192.168.1.255").unwrap()));
    assert!(Subnet::new(0, 31).hosts().is_none());
    assert_eq!(parse_cidr("10.0.0.0/24"), Some((0x0a000000, 24)));
    assert_eq!(parse_cidr("10.0.0.0/33"), None);
    assert_eq!(parse_cidr("10.0.0.0"), None);
    assert!(is_valid_domain("zstack.org"));
    assert!(!is_valid_domain("zstack"));
    assert!(!is_valid_domain("-a.org"));
}
