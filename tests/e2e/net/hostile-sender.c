/*
 * hostile-sender: writes hand-made hostile Ethernet frames for the e2e
 * scenario net-hostile-frames (tests/e2e/scenarios/net-hostile-frames.sh).
 *
 * The busybox guest has no tool that crafts frames, so this program (built
 * static on the host, shipped on the script disk) builds each frame byte by
 * byte and writes it through an AF_PACKET socket:
 *
 *   hostile-sender outbound IFACE PEER_MAC
 *       in the guest, on eth0: two allowed datagrams that open the flows the
 *       hostile frames lean on (markers E2E-FLOW-V4, E2E-FLOW-V6, E2E-FRAG-V4;
 *       these must pass), then every hostile frame (marker HOSTILE-NN; none
 *       may pass the filter). Prints E2E-HOSTILE-SENT=N, the frames written.
 *   hostile-sender inbound IFACE GUEST_MAC
 *       in L1, on the TAP: the malformed first fragments towards the guest
 *       (markers INBOUND-NN). Prints E2E-INBOUND-SENT=N.
 *   hostile-sender list
 *       one line per marker: the marker, its direction, what the frame is.
 *
 * The addresses are the scenario's (tests/e2e/lib.sh and
 * net/hostile-policy.toml); the sending side's MAC (and, outbound, the
 * guest's IPv4 address) is read from IFACE. Every checksum is right, so a
 * frame is refused for what it is, not for a bad checksum.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* The scenario's addresses. */
#define GUEST4 "192.0.2.10"
#define PEER4 "192.0.2.1"          /* the allowed UDP/TCP service */
#define OTHER4 "192.0.2.2"         /* on the TAP too, but allowed nothing */
#define FAR4 "198.51.100.66"       /* a destination no rule allows */
#define SPOOF4 "192.0.2.99"        /* not the guest's */
#define GUEST6 "2001:db8::10"
#define PEER6 "2001:db8::1"
#define OTHER6 "2001:db8::2"
#define FAR6 "2001:db8:ffff::66"
#define SPOOF6 "2001:db8::99"
#define SPOOF_LINK_LOCAL "fe80::99"
#define ALLOWED_UDP_PORT 7000
#define DENIED_UDP_PORT 7001
#define ALLOWED_TCP_PORT 8080
#define GUEST_PORT 40000

#define ETH_IPV4 0x0800
#define ETH_ARP 0x0806
#define ETH_IPV6 0x86dd
#define ETH_VLAN 0x8100
#define ETH_QINQ 0x88a8
#define ETH_EXPERIMENTAL 0x88b5

#define IP_ICMP 1
#define IP_IPIP 4
#define IP_TCP 6
#define IP_UDP 17
#define IP_IPV6 41
#define IP_ROUTING 43
#define IP_FRAGMENT 44
#define IP_GRE 47
#define IP_ICMPV6 58
#define IP_HOP_BY_HOP 0

#define IPV4_MORE_FRAGMENTS 0x2000

/* An NDP option type no standard assigns (RFC 4861 leaves room for more). */
#define NDP_UNKNOWN_OPTION 253

struct frame {
    uint8_t b[1600];
    size_t n;
};

struct context {
    uint8_t mac[6];      /* the sending interface's */
    uint8_t peer_mac[6]; /* where the frames go */
    struct in_addr guest4, peer4, other4, far4, spoof4;
    struct in6_addr guest6, link_local, peer6, other6, far6, spoof6, spoof_link_local;
    struct in6_addr all_nodes, mld_routers;
};

static const uint8_t spoof_mac[6] = {0x02, 0, 0, 0, 0, 0x99};
static const uint8_t all_nodes_mac[6] = {0x33, 0x33, 0, 0, 0, 1};
static const uint8_t broadcast_mac[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static void put(struct frame *f, const void *bytes, size_t n)
{
    if (n > sizeof f->b - f->n) {
        fprintf(stderr, "hostile-sender: frame too long\n");
        exit(1);
    }
    memcpy(f->b + f->n, bytes, n);
    f->n += n;
}

static void put8(struct frame *f, uint8_t v) { put(f, &v, 1); }

static void put16(struct frame *f, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    put(f, b, 2);
}

static void put32(struct frame *f, uint32_t v)
{
    put16(f, (uint16_t)(v >> 16));
    put16(f, (uint16_t)v);
}

static void set16(struct frame *f, size_t at, uint16_t v)
{
    f->b[at] = (uint8_t)(v >> 8);
    f->b[at + 1] = (uint8_t)v;
}

static void zeros(struct frame *f, size_t n)
{
    while (n--)
        put8(f, 0);
}

/* The marker, then copies of it up to `total` bytes. */
static void put_filled(struct frame *f, const char *marker, size_t total)
{
    size_t len = strlen(marker), done = 0;
    while (done < total) {
        size_t n = total - done < len ? total - done : len;
        put(f, marker, n);
        done += n;
    }
}

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t sum)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)p[i] << 8 | p[i + 1];
    if (n & 1)
        sum += (uint32_t)p[n - 1] << 8;
    return sum;
}

static uint16_t fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void ethernet(struct frame *f, const uint8_t *dst, const uint8_t *src, uint16_t type)
{
    put(f, dst, 6);
    put(f, src, 6);
    put16(f, type);
}

/* IPv4 header (options padded to 4 bytes); returns where it starts.
 * ipv4_end fills in the total length and the checksum. */
static size_t ipv4_begin(struct frame *f, struct in_addr src, struct in_addr dst, uint8_t protocol,
                         uint16_t fragment, const uint8_t *options, size_t options_len)
{
    size_t at = f->n, padded = (options_len + 3) & ~(size_t)3;
    static uint16_t identification = 0x5000;
    put8(f, (uint8_t)(0x40 | (20 + padded) / 4));
    put8(f, 0);
    put16(f, 0);
    put16(f, identification++);
    put16(f, fragment);
    put8(f, 64);
    put8(f, protocol);
    put16(f, 0);
    put(f, &src, 4);
    put(f, &dst, 4);
    if (options_len)
        put(f, options, options_len);
    zeros(f, padded - options_len);
    return at;
}

static void ipv4_checksum(struct frame *f, size_t at)
{
    size_t header_len = (size_t)(f->b[at] & 0x0f) * 4;
    if (header_len > f->n - at)
        header_len = f->n - at;
    set16(f, at + 10, 0);
    set16(f, at + 10, fold(sum16(f->b + at, header_len, 0)));
}

static void ipv4_end(struct frame *f, size_t at)
{
    set16(f, at + 2, (uint16_t)(f->n - at));
    ipv4_checksum(f, at);
}

static void ipv4_set_identification(struct frame *f, size_t at, uint16_t id)
{
    set16(f, at + 4, id);
    ipv4_checksum(f, at);
}

/* The layer-4 checksum at l4 + offset, over the IPv4 pseudo-header. */
static void ipv4_l4_checksum(struct frame *f, size_t ip, size_t l4, size_t offset)
{
    size_t len = f->n - l4;
    uint32_t sum = sum16(f->b + ip + 12, 8, 0) + f->b[ip + 9] + (uint32_t)len;
    set16(f, l4 + offset, 0);
    uint16_t c = fold(sum16(f->b + l4, len, sum));
    set16(f, l4 + offset, f->b[ip + 9] == IP_UDP && c == 0 ? 0xffff : c);
}

/* ICMP (IPv4) sums the message alone, without a pseudo-header. */
static void icmp4_checksum(struct frame *f, size_t l4)
{
    set16(f, l4 + 2, 0);
    set16(f, l4 + 2, fold(sum16(f->b + l4, f->n - l4, 0)));
}

static size_t ipv6_begin(struct frame *f, const struct in6_addr *src, const struct in6_addr *dst,
                         uint8_t next_header, uint8_t hop_limit)
{
    size_t at = f->n;
    put32(f, 0x60000000);
    put16(f, 0);
    put8(f, next_header);
    put8(f, hop_limit);
    put(f, src, 16);
    put(f, dst, 16);
    return at;
}

static void ipv6_end(struct frame *f, size_t at) { set16(f, at + 4, (uint16_t)(f->n - at - 40)); }

/* The layer-4 checksum at l4 + offset, over the IPv6 pseudo-header with
 * `dst` (the final destination when a routing header names another). */
static void ipv6_l4_checksum(struct frame *f, size_t ip, const struct in6_addr *dst, uint8_t protocol,
                             size_t l4, size_t offset)
{
    size_t len = f->n - l4;
    uint32_t sum = sum16(f->b + ip + 8, 16, 0);
    sum = sum16((const uint8_t *)dst, 16, sum) + (uint32_t)len + protocol;
    set16(f, l4 + offset, 0);
    uint16_t c = fold(sum16(f->b + l4, len, sum));
    set16(f, l4 + offset, protocol == IP_UDP && c == 0 ? 0xffff : c);
}

/* A whole IPv4/UDP datagram carrying `payload`. */
static size_t udp4(struct frame *f, struct in_addr src, struct in_addr dst, uint16_t sport,
                   uint16_t dport, const char *payload)
{
    size_t ip = ipv4_begin(f, src, dst, IP_UDP, 0, NULL, 0), l4 = f->n;
    put16(f, sport);
    put16(f, dport);
    put16(f, (uint16_t)(8 + strlen(payload)));
    put16(f, 0);
    put(f, payload, strlen(payload));
    ipv4_l4_checksum(f, ip, l4, 6);
    ipv4_end(f, ip);
    return ip;
}

/* A whole IPv6/UDP datagram carrying `payload`. */
static size_t udp6(struct frame *f, const struct in6_addr *src, const struct in6_addr *dst,
                   uint16_t sport, uint16_t dport, const char *payload)
{
    size_t ip = ipv6_begin(f, src, dst, IP_UDP, 64), l4 = f->n;
    put16(f, sport);
    put16(f, dport);
    put16(f, (uint16_t)(8 + strlen(payload)));
    put16(f, 0);
    put(f, payload, strlen(payload));
    ipv6_l4_checksum(f, ip, dst, IP_UDP, l4, 6);
    ipv6_end(f, ip);
    return ip;
}

/* --- The allowed frames that open the flows the hostile ones refer to. --- */

static void flow_v4(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    udp4(f, c->guest4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
}

static void flow_v6(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    udp6(f, &c->guest6, &c->peer6, GUEST_PORT, ALLOWED_UDP_PORT, marker);
}

#define FRAGMENTED_ID 0x4242

/* The first fragment of an allowed datagram (24 of its 40 bytes). */
static void fragment_v4(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_UDP, IPV4_MORE_FRAGMENTS, NULL, 0);
    put16(f, GUEST_PORT + 2);
    put16(f, ALLOWED_UDP_PORT);
    put16(f, 40);
    put16(f, 0);
    put_filled(f, marker, 16);
    ipv4_end(f, ip);
    ipv4_set_identification(f, ip, FRAGMENTED_ID);
}

/* --- Finding 2: ICMP errors quoting a live flow, sent elsewhere. --- */

static void icmp4_error_elsewhere(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->other4, IP_ICMP, 0, NULL, 0), l4 = f->n;
    put8(f, 3); /* destination unreachable */
    put8(f, 3); /* port unreachable */
    put16(f, 0);
    put32(f, 0);
    struct frame quoted = {.n = 0};
    udp4(&quoted, c->peer4, c->guest4, ALLOWED_UDP_PORT, GUEST_PORT, "");
    put(f, quoted.b, quoted.n);
    put_filled(f, marker, 1000 - quoted.n);
    icmp4_checksum(f, l4);
    ipv4_end(f, ip);
}

static void icmp6_error_elsewhere(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->guest6, &c->other6, IP_ICMPV6, 64), l4 = f->n;
    put8(f, 1); /* destination unreachable */
    put8(f, 4); /* port unreachable */
    put16(f, 0);
    put32(f, 0);
    struct frame quoted = {.n = 0};
    udp6(&quoted, &c->peer6, &c->guest6, ALLOWED_UDP_PORT, GUEST_PORT, "");
    put(f, quoted.b, quoted.n);
    put_filled(f, marker, 1000 - quoted.n);
    ipv6_l4_checksum(f, ip, &c->other6, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

/* --- Finding 3: MLD and solicitations from the link-local address to a
 * global one. --- */

static void mld_v1(struct frame *f, const struct context *c, const char *marker, uint8_t type)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->link_local, &c->peer6, IP_ICMPV6, 1), l4 = f->n;
    put8(f, type);
    put8(f, 0);
    put16(f, 0);
    put16(f, 0); /* maximum response delay */
    put16(f, 0);
    put(f, &c->all_nodes, 16);
    put(f, marker, strlen(marker));
    ipv6_l4_checksum(f, ip, &c->peer6, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

static void mld_query(struct frame *f, const struct context *c, const char *m) { mld_v1(f, c, m, 130); }
static void mld_report(struct frame *f, const struct context *c, const char *m) { mld_v1(f, c, m, 131); }
static void mld_done(struct frame *f, const struct context *c, const char *m) { mld_v1(f, c, m, 132); }

static void mld_v2_report(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->link_local, &c->peer6, IP_ICMPV6, 1), l4 = f->n;
    put8(f, 143);
    put8(f, 0);
    put16(f, 0);
    put16(f, 0);
    put16(f, 1); /* one record */
    put8(f, 4);  /* change to exclude */
    put8(f, 4);  /* auxiliary data: 4 words, the marker */
    put16(f, 0);
    put(f, &c->mld_routers, 16);
    put_filled(f, marker, 16);
    ipv6_l4_checksum(f, ip, &c->peer6, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

static void ndp_link_option(struct frame *f, uint8_t kind, const uint8_t *mac)
{
    put8(f, kind);
    put8(f, 1);
    put(f, mac, 6);
}

/* 16 bytes: an option of an unassigned type holding the marker. */
static void ndp_unknown_option(struct frame *f, const char *marker)
{
    put8(f, NDP_UNKNOWN_OPTION);
    put8(f, 2);
    put_filled(f, marker, 14);
}

static void router_solicitation_global(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->link_local, &c->peer6, IP_ICMPV6, 255), l4 = f->n;
    put8(f, 133);
    put8(f, 0);
    put16(f, 0);
    put32(f, 0);
    ndp_link_option(f, 1, c->mac);
    ndp_unknown_option(f, marker);
    ipv6_l4_checksum(f, ip, &c->peer6, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

static void neighbour_solicitation_global(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->link_local, &c->peer6, IP_ICMPV6, 255), l4 = f->n;
    put8(f, 135);
    put8(f, 0);
    put16(f, 0);
    put32(f, 0);
    put(f, &c->peer6, 16);
    ndp_link_option(f, 1, c->mac);
    ndp_unknown_option(f, marker);
    ipv6_l4_checksum(f, ip, &c->peer6, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

/* --- Tags: an allowed datagram behind 802.1Q / 802.1ad tags. --- */

static void vlan_tagged(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_VLAN);
    put16(f, 5);
    put16(f, ETH_IPV4);
    udp4(f, c->guest4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
}

static void priority_tagged(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_VLAN);
    put16(f, 0x6000); /* priority 3, VLAN 0 */
    put16(f, ETH_IPV4);
    udp4(f, c->guest4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
}

static void qinq_tagged(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_QINQ);
    put16(f, 10);
    put16(f, ETH_VLAN);
    put16(f, 5);
    put16(f, ETH_IPV4);
    udp4(f, c->guest4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
}

/* --- Tunnels to the allowed peer carrying traffic for a denied one. --- */

static void ipip(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_IPIP, 0, NULL, 0);
    udp4(f, c->guest4, c->far4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
    ipv4_end(f, ip);
}

static void gre(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_GRE, 0, NULL, 0);
    put16(f, 0);
    put16(f, ETH_IPV4);
    udp4(f, c->guest4, c->far4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
    ipv4_end(f, ip);
}

static void ipv6_in_ipv4(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_IPV6, 0, NULL, 0);
    udp6(f, &c->guest6, &c->far6, GUEST_PORT, ALLOWED_UDP_PORT, marker);
    ipv4_end(f, ip);
}

static void ipv4_in_ipv6(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->guest6, &c->peer6, IP_IPIP, 64);
    udp4(f, c->guest4, c->far4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
    ipv6_end(f, ip);
}

/* --- Spoofing. --- */

static void spoofed_mac(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, spoof_mac, ETH_IPV4);
    udp4(f, c->guest4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
}

static void spoofed_ipv4(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    udp4(f, c->spoof4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
}

static void spoofed_ipv6(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    udp6(f, &c->spoof6, &c->peer6, GUEST_PORT, ALLOWED_UDP_PORT, marker);
}

static void arp(struct frame *f, uint16_t operation, const uint8_t *sender_mac, struct in_addr sender,
                const uint8_t *target_mac, struct in_addr target)
{
    put16(f, 1);
    put16(f, ETH_IPV4);
    put8(f, 6);
    put8(f, 4);
    put16(f, operation);
    put(f, sender_mac, 6);
    put(f, &sender, 4);
    put(f, target_mac, 6);
    put(f, &target, 4);
}

static void arp_claims_peer(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_ARP);
    arp(f, 2, c->mac, c->peer4, c->peer_mac, c->guest4);
    put(f, marker, strlen(marker));
}

static void arp_other_sender_mac(struct frame *f, const struct context *c, const char *marker)
{
    static const uint8_t unknown[6] = {0};
    ethernet(f, broadcast_mac, c->mac, ETH_ARP);
    arp(f, 1, spoof_mac, c->guest4, unknown, c->peer4);
    put(f, marker, strlen(marker));
}

static void router_advertisement(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, all_nodes_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->link_local, &c->all_nodes, IP_ICMPV6, 255), l4 = f->n;
    put8(f, 134);
    put8(f, 0);
    put16(f, 0);
    put8(f, 64);
    put8(f, 0);
    put16(f, 1800);
    put32(f, 0);
    put32(f, 0);
    ndp_link_option(f, 1, c->mac);
    ndp_unknown_option(f, marker);
    ipv6_l4_checksum(f, ip, &c->all_nodes, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

static void neighbour_advertisement_for_peer(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, all_nodes_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->link_local, &c->all_nodes, IP_ICMPV6, 255), l4 = f->n;
    put8(f, 136);
    put8(f, 0);
    put16(f, 0);
    put32(f, 0x20000000); /* override */
    put(f, &c->peer6, 16);
    ndp_link_option(f, 2, c->mac);
    ndp_unknown_option(f, marker);
    ipv6_l4_checksum(f, ip, &c->all_nodes, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

static void mld_from_other_link_local(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, all_nodes_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->spoof_link_local, &c->all_nodes, IP_ICMPV6, 1), l4 = f->n;
    put8(f, 131);
    put8(f, 0);
    put16(f, 0);
    put16(f, 0);
    put16(f, 0);
    put(f, &c->all_nodes, 16);
    put(f, marker, strlen(marker));
    ipv6_l4_checksum(f, ip, &c->all_nodes, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

static void icmp4_redirect(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_ICMP, 0, NULL, 0), l4 = f->n;
    put8(f, 5); /* redirect */
    put8(f, 1); /* for the host */
    put16(f, 0);
    put(f, &c->far4, 4);
    struct frame quoted = {.n = 0};
    udp4(&quoted, c->peer4, c->guest4, ALLOWED_UDP_PORT, GUEST_PORT, marker);
    put(f, quoted.b, quoted.n);
    icmp4_checksum(f, l4);
    ipv4_end(f, ip);
}

static void icmp6_redirect(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->link_local, &c->peer6, IP_ICMPV6, 255), l4 = f->n;
    put8(f, 137);
    put8(f, 0);
    put16(f, 0);
    put32(f, 0);
    put(f, &c->far6, 16);  /* target: the better first hop */
    put(f, &c->peer6, 16); /* destination being redirected */
    ndp_unknown_option(f, marker);
    ipv6_l4_checksum(f, ip, &c->peer6, IP_ICMPV6, l4, 2);
    ipv6_end(f, ip);
}

/* --- Source routing past the policy: the allowed peer is only the next
 * hop, the final destination is a denied one. --- */

static void ipv6_routing_header(struct frame *f, const struct context *c, const char *marker,
                                uint8_t type)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->guest6, &c->peer6, IP_ROUTING, 64);
    put8(f, IP_UDP);
    if (type == 0) {
        put8(f, 2); /* 16 more bytes: one address */
        put8(f, 0);
        put8(f, 1); /* segments left */
        put32(f, 0);
        put(f, &c->far6, 16);
    } else {
        /* Segment routing (RFC 8754): the list is in reverse order. */
        put8(f, 4); /* 32 more bytes: two segments */
        put8(f, 4);
        put8(f, 1);  /* segments left: list[1] is the peer, list[0] comes next */
        put8(f, 1);  /* last entry */
        put8(f, 0);  /* flags */
        put16(f, 0); /* tag */
        put(f, &c->far6, 16);
        put(f, &c->peer6, 16);
    }
    size_t l4 = f->n;
    put16(f, GUEST_PORT);
    put16(f, ALLOWED_UDP_PORT);
    put16(f, (uint16_t)(8 + strlen(marker)));
    put16(f, 0);
    put(f, marker, strlen(marker));
    ipv6_l4_checksum(f, ip, &c->far6, IP_UDP, l4, 6);
    ipv6_end(f, ip);
}

static void ipv6_routing_type0(struct frame *f, const struct context *c, const char *m) { ipv6_routing_header(f, c, m, 0); }
static void ipv6_segment_routing(struct frame *f, const struct context *c, const char *m) { ipv6_routing_header(f, c, m, 4); }

static void ipv4_source_route(struct frame *f, const struct context *c, const char *marker, uint8_t option)
{
    uint8_t route[8] = {option, 7, 4};
    memcpy(route + 3, &c->far4, 4);
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_UDP, 0, route, sizeof route), l4 = f->n;
    put16(f, GUEST_PORT);
    put16(f, ALLOWED_UDP_PORT);
    put16(f, (uint16_t)(8 + strlen(marker)));
    put16(f, 0);
    put(f, marker, strlen(marker));
    ipv4_end(f, ip);
    ipv4_l4_checksum(f, ip, l4, 6);
}

static void ipv4_loose_source_route(struct frame *f, const struct context *c, const char *m) { ipv4_source_route(f, c, m, 131); }
static void ipv4_strict_source_route(struct frame *f, const struct context *c, const char *m) { ipv4_source_route(f, c, m, 137); }

/* --- Lengths that claim more (or less) than the frame holds. --- */

static void ipv4_total_length_oversize(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = udp4(f, c->guest4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
    set16(f, ip + 2, 1400);
    ipv4_checksum(f, ip);
}

static void ipv4_header_beyond_total_length(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = udp4(f, c->guest4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
    f->b[ip] = 0x4f; /* 60-byte header in a shorter packet */
    ipv4_checksum(f, ip);
}

static void udp_length(struct frame *f, const struct context *c, const char *marker, uint16_t length)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = udp4(f, c->guest4, c->peer4, GUEST_PORT, ALLOWED_UDP_PORT, marker);
    set16(f, ip + 20 + 4, length);
    ipv4_l4_checksum(f, ip, ip + 20, 6);
}

static void udp_length_oversize(struct frame *f, const struct context *c, const char *m) { udp_length(f, c, m, 1000); }
static void udp_length_below_header(struct frame *f, const struct context *c, const char *m) { udp_length(f, c, m, 4); }

static void ipv6_payload_length_oversize(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = udp6(f, &c->guest6, &c->peer6, GUEST_PORT, ALLOWED_UDP_PORT, marker);
    set16(f, ip + 4, 1400);
}

static void ipv6_jumbogram(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->guest6, &c->peer6, IP_HOP_BY_HOP, 64);
    uint32_t udp_len = (uint32_t)(8 + strlen(marker));
    put8(f, IP_UDP);
    put8(f, 0);
    put8(f, 0xc2); /* jumbo payload */
    put8(f, 4);
    put32(f, 8 + udp_len);
    size_t l4 = f->n;
    put16(f, GUEST_PORT);
    put16(f, ALLOWED_UDP_PORT);
    put16(f, 0); /* RFC 2675: the jumbo length stands instead */
    put16(f, 0);
    put(f, marker, strlen(marker));
    ipv6_l4_checksum(f, ip, &c->peer6, IP_UDP, l4, 6);
    /* payload length stays 0 */
}

static void tcp_data_offset_oversize(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_TCP, 0, NULL, 0), l4 = f->n;
    put16(f, GUEST_PORT);
    put16(f, ALLOWED_TCP_PORT);
    put32(f, 1);
    put32(f, 0);
    put8(f, 0xf0); /* a 60-byte header in a 30-byte segment */
    put8(f, 0x02); /* SYN */
    put16(f, 65535);
    put16(f, 0);
    put16(f, 0);
    put(f, marker, strlen(marker));
    ipv4_l4_checksum(f, ip, l4, 16);
    ipv4_end(f, ip);
}

static void unknown_ethertype(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_EXPERIMENTAL);
    put_filled(f, marker, 46);
}

/* --- Fragments. --- */

/* Another first fragment of the allowed datagram's series (fragment_v4),
 * now to a denied port. */
static void fragment_overlapping_first(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_UDP, IPV4_MORE_FRAGMENTS, NULL, 0);
    put16(f, GUEST_PORT + 2);
    put16(f, DENIED_UDP_PORT);
    put16(f, 40);
    put16(f, 0);
    put_filled(f, marker, 16);
    ipv4_end(f, ip);
    ipv4_set_identification(f, ip, FRAGMENTED_ID);
}

#define TINY_ID 0x4343

/* A TCP first fragment holding only the ports: the flags come later. */
static void tcp_tiny_first_fragment(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_TCP, IPV4_MORE_FRAGMENTS, NULL, 0);
    put16(f, GUEST_PORT + 3);
    put16(f, ALLOWED_TCP_PORT);
    put32(f, 1);
    ipv4_end(f, ip);
    ipv4_set_identification(f, ip, TINY_ID);
    put(f, marker, strlen(marker)); /* after the packet: Ethernet padding */
}

static void tcp_tiny_second_fragment(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_TCP, 1 /* offset 8 bytes */, NULL, 0);
    put32(f, 0);
    put8(f, 0x50);
    put8(f, 0x02); /* SYN */
    put16(f, 65535);
    put16(f, 0);
    put16(f, 0);
    put(f, marker, strlen(marker));
    ipv4_end(f, ip);
    ipv4_set_identification(f, ip, TINY_ID);
}

static void orphan_fragment(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, c->guest4, c->peer4, IP_UDP, 64 /* offset 512 bytes */, NULL, 0);
    put_filled(f, marker, 32);
    ipv4_end(f, ip);
}

static void ipv6_two_fragment_headers(struct frame *f, const struct context *c, const char *marker)
{
    ethernet(f, c->peer_mac, c->mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, &c->guest6, &c->peer6, IP_FRAGMENT, 64);
    put8(f, IP_FRAGMENT);
    put8(f, 0);
    put16(f, 1); /* offset 0, more fragments */
    put32(f, 0x4646);
    put8(f, IP_UDP);
    put8(f, 0);
    put16(f, 1);
    put32(f, 0x4747);
    put16(f, GUEST_PORT + 4);
    put16(f, ALLOWED_UDP_PORT);
    put16(f, 64);
    put16(f, 0);
    put_filled(f, marker, 24);
    ipv6_end(f, ip);
}

/* --- Finding 1: first fragments of UDP shorter than the UDP header. --- */

static void ipv4_short_udp_first_fragment(struct frame *f, const uint8_t *dst_mac, const uint8_t *src_mac,
                                          struct in_addr src, struct in_addr dst, uint16_t sport,
                                          uint16_t dport, const char *marker)
{
    ethernet(f, dst_mac, src_mac, ETH_IPV4);
    size_t ip = ipv4_begin(f, src, dst, IP_UDP, IPV4_MORE_FRAGMENTS, NULL, 0);
    put16(f, sport);
    put16(f, dport);
    put16(f, 14); /* 6 bytes of the 8-byte header */
    ipv4_end(f, ip);
    put(f, marker, strlen(marker)); /* after the packet: Ethernet padding */
}

static void ipv6_short_udp_first_fragment(struct frame *f, const uint8_t *dst_mac, const uint8_t *src_mac,
                                          const struct in6_addr *src, const struct in6_addr *dst,
                                          uint16_t sport, uint16_t dport, const char *marker)
{
    ethernet(f, dst_mac, src_mac, ETH_IPV6);
    size_t ip = ipv6_begin(f, src, dst, IP_FRAGMENT, 64);
    put8(f, IP_UDP);
    put8(f, 0);
    put16(f, 1); /* offset 0, more fragments */
    put32(f, 0x4848);
    put16(f, sport);
    put16(f, dport);
    put16(f, 15);
    put8(f, 0); /* 7 bytes of the 8-byte header */
    ipv6_end(f, ip);
    put(f, marker, strlen(marker));
}

static void short_udp_fragment_v4_out(struct frame *f, const struct context *c, const char *marker)
{
    ipv4_short_udp_first_fragment(f, c->peer_mac, c->mac, c->guest4, c->peer4, GUEST_PORT + 5,
                                  ALLOWED_UDP_PORT, marker);
}

static void short_udp_fragment_v6_out(struct frame *f, const struct context *c, const char *marker)
{
    ipv6_short_udp_first_fragment(f, c->peer_mac, c->mac, &c->guest6, &c->peer6, GUEST_PORT + 5,
                                  ALLOWED_UDP_PORT, marker);
}

/* Inbound, `peer_mac` is the guest's and the frames come from the peer. */
static void short_udp_fragment_v4_in(struct frame *f, const struct context *c, const char *marker)
{
    ipv4_short_udp_first_fragment(f, c->peer_mac, c->mac, c->peer4, c->guest4, ALLOWED_UDP_PORT,
                                  GUEST_PORT, marker);
}

static void short_udp_fragment_v6_in(struct frame *f, const struct context *c, const char *marker)
{
    ipv6_short_udp_first_fragment(f, c->peer_mac, c->mac, &c->peer6, &c->guest6, ALLOWED_UDP_PORT,
                                  GUEST_PORT, marker);
}

struct kind {
    const char *what;
    void (*build)(struct frame *, const struct context *, const char *marker);
};

/* Sent first, allowed: they open the flows and the fragment series that
 * the hostile frames below refer to. */
static const struct kind openers[] = {
    {"E2E-FLOW-V4", flow_v4},
    {"E2E-FLOW-V6", flow_v6},
    {"E2E-FRAG-V4", fragment_v4},
};

/* Outbound, in this order: the frames that abort an unfixed filter last,
 * so that everything before them is tested too. */
static const struct kind hostile[] = {
    {"ICMP error quoting a live flow, sent to another host, 1000 bytes", icmp4_error_elsewhere},
    {"ICMPv6 error quoting a live flow, sent to another host, 1000 bytes", icmp6_error_elsewhere},
    {"MLD query from the link-local address to a global one", mld_query},
    {"MLD report from the link-local address to a global one", mld_report},
    {"MLD done from the link-local address to a global one", mld_done},
    {"MLDv2 report from the link-local address to a global one", mld_v2_report},
    {"router solicitation with an unknown option to a global address", router_solicitation_global},
    {"neighbour solicitation with an unknown option to a global address", neighbour_solicitation_global},
    {"802.1Q-tagged allowed datagram", vlan_tagged},
    {"priority-tagged (VLAN 0) allowed datagram", priority_tagged},
    {"802.1ad+802.1Q (QinQ) tagged allowed datagram", qinq_tagged},
    {"IPv4-in-IPv4 to the peer, inner datagram to a denied host", ipip},
    {"GRE to the peer, inner datagram to a denied host", gre},
    {"IPv6-in-IPv4 to the peer, inner datagram to a denied host", ipv6_in_ipv4},
    {"IPv4-in-IPv6 to the peer, inner datagram to a denied host", ipv4_in_ipv6},
    {"allowed datagram from another source MAC", spoofed_mac},
    {"allowed datagram from another source IPv4 address", spoofed_ipv4},
    {"allowed datagram from another source IPv6 address", spoofed_ipv6},
    {"ARP reply claiming the peer's IPv4 address", arp_claims_peer},
    {"ARP request with another sender MAC than the frame's", arp_other_sender_mac},
    {"router advertisement from the guest", router_advertisement},
    {"neighbour advertisement claiming the peer's IPv6 address", neighbour_advertisement_for_peer},
    {"MLD report from another link-local address", mld_from_other_link_local},
    {"ICMP redirect", icmp4_redirect},
    {"ICMPv6 redirect", icmp6_redirect},
    {"IPv6 type 0 routing header via the peer to a denied host", ipv6_routing_type0},
    {"IPv6 segment routing header via the peer to a denied host", ipv6_segment_routing},
    {"IPv4 loose source route via the peer to a denied host", ipv4_loose_source_route},
    {"IPv4 strict source route via the peer to a denied host", ipv4_strict_source_route},
    {"IPv4 total length beyond the frame", ipv4_total_length_oversize},
    {"IPv4 header length beyond the total length", ipv4_header_beyond_total_length},
    {"UDP length beyond the packet", udp_length_oversize},
    {"UDP length below the UDP header", udp_length_below_header},
    {"IPv6 payload length beyond the frame", ipv6_payload_length_oversize},
    {"IPv6 jumbogram", ipv6_jumbogram},
    {"TCP header length beyond the segment", tcp_data_offset_oversize},
    {"unknown EtherType", unknown_ethertype},
    {"first fragment to a denied port in an allowed series", fragment_overlapping_first},
    {"TCP first fragment of 8 bytes (no flags)", tcp_tiny_first_fragment},
    {"second fragment of that tiny TCP series", tcp_tiny_second_fragment},
    {"fragment of a series that never started", orphan_fragment},
    {"IPv6 packet with two fragment headers", ipv6_two_fragment_headers},
    {"IPv4 first fragment of UDP with 6 of the 8 header bytes", short_udp_fragment_v4_out},
    {"IPv6 first fragment of UDP with 7 of the 8 header bytes", short_udp_fragment_v6_out},
};

static const struct kind inbound[] = {
    {"IPv4 first fragment of UDP with 6 of the 8 header bytes, to the guest", short_udp_fragment_v4_in},
    {"IPv6 first fragment of UDP with 7 of the 8 header bytes, to the guest", short_udp_fragment_v6_in},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void address4(const char *text, struct in_addr *out)
{
    if (inet_pton(AF_INET, text, out) != 1)
        abort();
}

static void address6(const char *text, struct in6_addr *out)
{
    if (inet_pton(AF_INET6, text, out) != 1)
        abort();
}

static int parse_mac(const char *text, uint8_t *mac)
{
    unsigned int b[6];
    char end;
    if (sscanf(text, "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &end) != 6)
        return -1;
    for (int i = 0; i < 6; i++) {
        if (b[i] > 0xff)
            return -1;
        mac[i] = (uint8_t)b[i];
    }
    return 0;
}

static int send_all(int fd, int ifindex, const struct context *c, const struct kind *kinds, size_t count,
                    const char *prefix, int numbered)
{
    int sent = 0;
    for (size_t i = 0; i < count; i++) {
        struct frame f = {.n = 0};
        char marker[32];
        if (numbered)
            snprintf(marker, sizeof marker, "%s-%02zu", prefix, i + 1);
        else
            snprintf(marker, sizeof marker, "%s", kinds[i].what);
        kinds[i].build(&f, c, marker);
        struct sockaddr_ll to = {
            .sll_family = AF_PACKET,
            .sll_ifindex = ifindex,
            .sll_protocol = htons((uint16_t)(f.b[12] << 8 | f.b[13])),
            .sll_halen = 6,
        };
        memcpy(to.sll_addr, f.b, 6);
        if (sendto(fd, f.b, f.n, 0, (struct sockaddr *)&to, sizeof to) == (ssize_t)f.n)
            sent++;
        else
            fprintf(stderr, "hostile-sender: %s not sent: %s\n", marker, strerror(errno));
        /* The guest's transmit queue is short; the filter must see every frame. */
        usleep(20000);
    }
    return sent;
}

static int usage(void)
{
    fprintf(stderr, "usage: hostile-sender outbound IFACE PEER_MAC | inbound IFACE GUEST_MAC | list\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "list") == 0) {
        for (size_t i = 0; i < COUNT(hostile); i++)
            printf("HOSTILE-%02zu outbound %s\n", i + 1, hostile[i].what);
        for (size_t i = 0; i < COUNT(inbound); i++)
            printf("INBOUND-%02zu inbound %s\n", i + 1, inbound[i].what);
        return 0;
    }
    if (argc != 4)
        return usage();
    int outbound = strcmp(argv[1], "outbound") == 0;
    if (!outbound && strcmp(argv[1], "inbound") != 0)
        return usage();

    struct context c;
    memset(&c, 0, sizeof c);
    if (parse_mac(argv[3], c.peer_mac) != 0) {
        fprintf(stderr, "hostile-sender: '%s' is not a MAC address\n", argv[3]);
        return 2;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) {
        perror("hostile-sender: AF_PACKET socket");
        return 1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", argv[2]);
    if (ioctl(fd, SIOCGIFINDEX, &ifr) != 0) {
        perror("hostile-sender: interface index");
        return 1;
    }
    int ifindex = ifr.ifr_ifindex;
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) != 0) {
        perror("hostile-sender: interface MAC");
        return 1;
    }
    memcpy(c.mac, ifr.ifr_hwaddr.sa_data, 6);
    address4(GUEST4, &c.guest4);
    if (outbound) {
        ifr.ifr_addr.sa_family = AF_INET;
        if (ioctl(fd, SIOCGIFADDR, &ifr) != 0) {
            perror("hostile-sender: interface IPv4 address");
            return 1;
        }
        c.guest4 = ((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr;
    }
    address4(PEER4, &c.peer4);
    address4(OTHER4, &c.other4);
    address4(FAR4, &c.far4);
    address4(SPOOF4, &c.spoof4);
    address6(GUEST6, &c.guest6);
    address6(PEER6, &c.peer6);
    address6(OTHER6, &c.other6);
    address6(FAR6, &c.far6);
    address6(SPOOF6, &c.spoof6);
    address6(SPOOF_LINK_LOCAL, &c.spoof_link_local);
    address6("ff02::1", &c.all_nodes);
    address6("ff02::16", &c.mld_routers);
    /* The EUI-64 link-local address the filter knows the guest by. */
    uint8_t *ll = c.link_local.s6_addr;
    ll[0] = 0xfe;
    ll[1] = 0x80;
    ll[8] = c.mac[0] ^ 0x02;
    ll[9] = c.mac[1];
    ll[10] = c.mac[2];
    ll[11] = 0xff;
    ll[12] = 0xfe;
    ll[13] = c.mac[3];
    ll[14] = c.mac[4];
    ll[15] = c.mac[5];

    if (outbound) {
        int opened = send_all(fd, ifindex, &c, openers, COUNT(openers), NULL, 0);
        int sent = send_all(fd, ifindex, &c, hostile, COUNT(hostile), "HOSTILE", 1);
        printf("E2E-FLOWS-SENT=%d\nE2E-HOSTILE-SENT=%d\n", opened, sent);
        return opened == (int)COUNT(openers) && sent == (int)COUNT(hostile) ? 0 : 1;
    }
    int sent = send_all(fd, ifindex, &c, inbound, COUNT(inbound), "INBOUND", 1);
    printf("E2E-INBOUND-SENT=%d\n", sent);
    return sent == (int)COUNT(inbound) ? 0 : 1;
}
