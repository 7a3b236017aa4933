-- Networks: L2 networks and their cluster attachments, L3 networks with IP ranges, DNS,
-- host routes, reserved ranges, network service providers and the addresses in use.
CREATE TABLE l2_network (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    zone_uuid TEXT NOT NULL,
    physical_interface TEXT NOT NULL,
    type TEXT NOT NULL,
    v_switch_type TEXT NOT NULL,
    virtual_network_id BIGINT NOT NULL,
    isolated BIGINT NOT NULL,
    pvlan TEXT,
    vlan BIGINT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX l2_network_zone ON l2_network (zone_uuid);
CREATE INDEX l2_network_create ON l2_network (create_date);
CREATE INDEX l2_network_interface ON l2_network (physical_interface);

-- The VLAN networks, as upstream's L2VlanNetworkVO table.
CREATE VIEW l2_vlan_network AS SELECT * FROM l2_network WHERE type = 'L2VlanNetwork';

CREATE TABLE l2_network_cluster_ref (
    l2_network_uuid TEXT NOT NULL,
    cluster_uuid TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL,
    PRIMARY KEY (l2_network_uuid, cluster_uuid)
);
CREATE INDEX l2_network_cluster_ref_cluster ON l2_network_cluster_ref (cluster_uuid);

CREATE TABLE l3_network (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    type TEXT NOT NULL,
    zone_uuid TEXT NOT NULL,
    l2_network_uuid TEXT NOT NULL,
    state TEXT NOT NULL,
    dns_domain TEXT,
    system BIGINT NOT NULL,
    category TEXT NOT NULL,
    ip_version BIGINT NOT NULL,
    enable_ipam BIGINT NOT NULL,
    isolated BIGINT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX l3_network_l2 ON l3_network (l2_network_uuid);
CREATE INDEX l3_network_zone ON l3_network (zone_uuid);
CREATE INDEX l3_network_create ON l3_network (create_date);

-- start_ip_long/end_ip_long: the IPv4 bounds as numbers, for overlap checks in SQL.
CREATE TABLE ip_range (
    uuid TEXT PRIMARY KEY,
    l3_network_uuid TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    start_ip TEXT NOT NULL,
    end_ip TEXT NOT NULL,
    netmask TEXT NOT NULL,
    gateway TEXT,
    network_cidr TEXT,
    ip_version BIGINT NOT NULL,
    address_mode TEXT,
    prefix_len BIGINT,
    ip_range_type TEXT NOT NULL,
    start_ip_long BIGINT NOT NULL,
    end_ip_long BIGINT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX ip_range_l3 ON ip_range (l3_network_uuid);
CREATE INDEX ip_range_create ON ip_range (create_date);

CREATE TABLE l3_network_dns (
    l3_network_uuid TEXT NOT NULL,
    dns TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL,
    PRIMARY KEY (l3_network_uuid, dns)
);

CREATE TABLE l3_network_host_route (
    id BIGINT PRIMARY KEY,
    l3_network_uuid TEXT NOT NULL,
    prefix TEXT NOT NULL,
    nexthop TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX l3_network_host_route_l3 ON l3_network_host_route (l3_network_uuid);

CREATE TABLE reserved_ip_range (
    uuid TEXT PRIMARY KEY,
    l3_network_uuid TEXT NOT NULL,
    name TEXT,
    description TEXT,
    start_ip TEXT NOT NULL,
    end_ip TEXT NOT NULL,
    ip_version BIGINT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX reserved_ip_range_l3 ON reserved_ip_range (l3_network_uuid);

-- Addresses in use. The UNIQUE constraint makes a double allocation impossible: allocate
-- by inserting a chosen free address and retrying on conflict.
CREATE TABLE used_ip (
    uuid TEXT PRIMARY KEY,
    ip_range_uuid TEXT NOT NULL,
    l3_network_uuid TEXT NOT NULL,
    ip_version BIGINT NOT NULL,
    ip TEXT NOT NULL,
    ip_in_long BIGINT NOT NULL,
    netmask TEXT,
    gateway TEXT,
    used_for TEXT,
    meta_data TEXT,
    vm_nic_uuid TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL,
    UNIQUE (l3_network_uuid, ip_in_long)
);
CREATE INDEX used_ip_range ON used_ip (ip_range_uuid);
CREATE INDEX used_ip_nic ON used_ip (vm_nic_uuid);

CREATE TABLE network_service_provider (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    type TEXT NOT NULL UNIQUE,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);

CREATE TABLE network_service_type (
    network_service_provider_uuid TEXT NOT NULL,
    type TEXT NOT NULL,
    PRIMARY KEY (network_service_provider_uuid, type)
);

CREATE TABLE network_service_provider_l2_ref (
    network_service_provider_uuid TEXT NOT NULL,
    l2_network_uuid TEXT NOT NULL,
    PRIMARY KEY (network_service_provider_uuid, l2_network_uuid)
);
CREATE INDEX network_service_provider_l2_ref_l2 ON network_service_provider_l2_ref (l2_network_uuid);

CREATE TABLE network_service_l3_ref (
    l3_network_uuid TEXT NOT NULL,
    network_service_provider_uuid TEXT NOT NULL,
    network_service_type TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    PRIMARY KEY (l3_network_uuid, network_service_type)
);

-- The built-in flat network service provider (upstream FlatProviderFactory creates it at
-- first start).
INSERT INTO network_service_provider (uuid, name, description, type, create_date, last_op_date)
VALUES ('bbb525dc4cc8451295d379797e092dba', 'Flat Network Service Provider', 'Flat Network Service Provider', 'Flat',
        1764201600000, 1764201600000);
INSERT INTO network_service_type (network_service_provider_uuid, type) VALUES ('bbb525dc4cc8451295d379797e092dba', 'DHCP');
INSERT INTO network_service_type (network_service_provider_uuid, type) VALUES ('bbb525dc4cc8451295d379797e092dba', 'Userdata');
INSERT INTO network_service_type (network_service_provider_uuid, type) VALUES ('bbb525dc4cc8451295d379797e092dba', 'Eip');
INSERT INTO network_service_type (network_service_provider_uuid, type) VALUES ('bbb525dc4cc8451295d379797e092dba', 'DNS')
