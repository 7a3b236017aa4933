-- Issue 3 fixes (additive).
-- DNS servers keep the order they were added in (upstream sorts L3NetworkDnsVO by its
-- generated id): seq is that insertion order, per L3 network. Rows from before this
-- migration get their order from (create_date, dns).
ALTER TABLE l3_network_dns ADD COLUMN seq BIGINT;
UPDATE l3_network_dns SET seq = (SELECT COUNT(*) FROM l3_network_dns d2
    WHERE d2.l3_network_uuid = l3_network_dns.l3_network_uuid
    AND (d2.create_date < l3_network_dns.create_date
         OR (d2.create_date = l3_network_dns.create_date AND d2.dns <= l3_network_dns.dns)));
CREATE INDEX l3_network_dns_seq ON l3_network_dns (l3_network_uuid, seq);

-- One NFS export per zone, by construction: two primary storages of type NFS in the same
-- zone cannot share a url.
CREATE UNIQUE INDEX primary_storage_nfs_url ON primary_storage (zone_uuid, url) WHERE type = 'NFS';

-- One host route per prefix on an L3 network (upstream's interceptor rule, made a constraint).
CREATE UNIQUE INDEX l3_network_host_route_prefix ON l3_network_host_route (l3_network_uuid, prefix)
