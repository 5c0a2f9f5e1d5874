/* vnet64's tc-BPF translator: the fast path of a host's stateless IPv6 <-> IPv4
 * translator, beside TAYGA (node/translator.py, engine "bpf").
 *
 * It sits at the ingress of the translator namespace's veth from br-int (ovs0) and
 * translates, as vnet64's TAYGA build does (RFC 7915, docs/lab.md "The translator
 * engine"), only the packets that make up a connection's bulk:
 *   IPv6 -> IPv4: no extension header, TCP, UDP or ICMPv6 echo request / reply, both
 *                 addresses inside the translator prefix (/96, RFC 6052);
 *   IPv4 -> IPv6: no options, not a fragment, DF set or a payload that fits 1280
 *                 bytes of IPv6 (TAYGA's "lazy" rule: no Fragment header then), a valid
 *                 header checksum, TCP, UDP with a checksum, or ICMP echo request / reply;
 * with a hop limit / TTL of at least 2 on both sides, embedded IPv4 addresses TAYGA would
 * map (not 127/8, 169.254/16, 224/3, nor TAYGA's own address), and a result that fits
 * the translator's MTU. It sends the translated packet straight back out of ovs0 to
 * br-int, with the MAC addresses swapped (TAYGA's answers go out the same way).
 *
 * Everything else (ICMP errors, fragments, options and extension headers - among them
 * the routing headers the namespace's nftables bounce - UDP without a checksum, DF
 * clear above 1280 bytes of IPv6, what is too big, addresses TAYGA refuses, hop limits
 * that expire) goes on unchanged into the namespace and TAYGA, which answers as before.
 *
 * Fields, as vnet64's TAYGA build sets them: traffic class <-> TOS, flow label 0, one
 * router hop across (TTL = hop limit - 1 and back), IPv4 DF clear up to 1260 bytes and
 * set above (RFC 7915 5.1), the Identification from one counter (random start, never 0).
 * Checksums are updated, never recomputed over the payload: TCP and UDP by the
 * pseudo-header's address change, ICMP by the pseudo-header ICMPv6 has and ICMP lacks.
 *
 * Built per host by the node agent (clang -target bpf), the translator's settings as
 * macros: XLAT_PREFIX0..2 (the /96 prefix's three 32-bit words, host order),
 * XLAT_IPV4 (TAYGA's own IPv4, host order), XLAT_MTU.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef XLAT_PREFIX0
#error "XLAT_PREFIX0..2, XLAT_IPV4 and XLAT_MTU are set by the node agent"
#endif

#define DF_MIN_LEN 1260         /* RFC 7915 5.1: DF clear up to this IPv4 length */
#define IPV6_MIN_MTU 1280       /* TAYGA's ipv6-offlink-mtu: DF clear and larger: fragments */
#define ETH_LEN 14
#define IP4_LEN 20
#define IP6_LEN 40
#define IP4_DF 0x4000
#define IP4_FRAG 0x3fff         /* MF and the offset */
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6
#define ICMP_CSUM_OFF 2

/* what the program did, per CPU: read with bpftool (map "xlat_stats") */
enum { STAT_6TO4, STAT_4TO6, STAT_TO_TAYGA, STAT_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} xlat_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} xlat_ident SEC(".maps");

struct v6addrs {
	__be32 src[4];
	__be32 dst[4];
};

struct pseudo6 {
	struct v6addrs a;
	__be32 len;
	__be32 nh;
};

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&xlat_stats, &what);

	if (n)
		*n += 1;
}

static __always_inline int to_tayga(void)
{
	count(STAT_TO_TAYGA);
	return TC_ACT_OK;
}

static __always_inline __u16 fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* an IPv4 address TAYGA maps to and from the prefix (addrmap.c validate_ip4_addr) */
static __always_inline int mappable(__be32 a)
{
	__u32 h = bpf_ntohl(a);

	return (h >> 24) != 127 && (h >> 16) != 0xa9fe && (h >> 29) != 7 && h != XLAT_IPV4;
}

static __always_inline int in_prefix(const __be32 *a)
{
	return a[0] == bpf_htonl(XLAT_PREFIX0) && a[1] == bpf_htonl(XLAT_PREFIX1) &&
	       a[2] == bpf_htonl(XLAT_PREFIX2);
}

static __always_inline __u16 next_ident(void)
{
	__u32 key = 0;
	__u32 *v = bpf_map_lookup_elem(&xlat_ident, &key);
	__u32 id;

	if (!v)
		return 1;
	if (*v == 0)
		*v = bpf_get_prandom_u32() | 1;
	id = __sync_fetch_and_add(v, 1) & 0xffff;
	if (id == 0)
		id = __sync_fetch_and_add(v, 1) & 0xffff;
	return id ? id : 1;
}

/* The checksum's offset of what the program translates: TCP, UDP with a checksum (TAYGA
 * computes the one IPv6 needs, or drops an IPv6 datagram without), echo (``icmp``: the
 * version's ICMP protocol, ``request`` / ``reply`` its types); -1: for TAYGA. */
static __always_inline int csum_offset(struct __sk_buff *skb, __u32 l4, __u8 proto, __u8 icmp,
				       const __u8 *l4p, void *end, __u8 request, __u8 reply)
{
	__u16 check;

	if (proto == IPPROTO_TCP)
		return l4 + TCP_CSUM_OFF;
	if (proto == IPPROTO_UDP)
		return bpf_skb_load_bytes(skb, l4 + UDP_CSUM_OFF, &check, 2) || check == 0 ?
		       -1 : l4 + UDP_CSUM_OFF;
	if (proto == icmp && (void *)(l4p + 4) <= end && l4p[1] == 0 &&
	    (l4p[0] == request || l4p[0] == reply))
		return l4 + ICMP_CSUM_OFF;
	return -1;
}

/* TCP and UDP: the pseudo-header's addresses change from ``from`` to ``to``. */
static __always_inline int addr_csum(struct __sk_buff *skb, int csum_off, __u8 proto,
				     __be32 *from, __u32 from_size, __be32 *to, __u32 to_size)
{
	__s64 diff = bpf_csum_diff(from, from_size, to, to_size, 0);

	return bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR |
				   (proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0));
}

/* Echo: ICMPv6's checksum covers a pseudo-header, ICMP's does not - take it out (to IPv4)
 * or add it (to IPv6) - and the type changes (written at ``l4``). */
static __always_inline int echo_csum(struct __sk_buff *skb, __u32 l4, int csum_off,
				     struct pseudo6 *ph, int to_v6, __u8 type, __u8 new_type)
{
	__s64 diff = to_v6 ? bpf_csum_diff(0, 0, (__be32 *)ph, sizeof(*ph), 0)
			   : bpf_csum_diff((__be32 *)ph, sizeof(*ph), 0, 0, 0);

	return bpf_l4_csum_replace(skb, csum_off, 0, diff, 0) ||
	       bpf_l4_csum_replace(skb, csum_off, bpf_htons(type << 8), bpf_htons(new_type << 8), 2) ||
	       bpf_skb_store_bytes(skb, l4, &new_type, 1, 0);
}

/* The new family's headers in place of the old (the L4 header and payload stay), and
 * straight back out of the veth it came from, to br-int. */
static __always_inline int emit(struct __sk_buff *skb, struct ethhdr *eth, void *l3,
				__u32 l3_len, __u32 stat)
{
	if (bpf_skb_change_proto(skb, eth->h_proto, 0) ||
	    bpf_skb_store_bytes(skb, 0, eth, sizeof(*eth), 0) ||
	    bpf_skb_store_bytes(skb, ETH_LEN, l3, l3_len, 0))
		return TC_ACT_SHOT;
	count(stat);
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline void swap_macs(struct ethhdr *out, const struct ethhdr *in, __u16 proto)
{
	__builtin_memcpy(out->h_dest, in->h_source, ETH_ALEN);
	__builtin_memcpy(out->h_source, in->h_dest, ETH_ALEN);
	out->h_proto = bpf_htons(proto);
}

static __always_inline int six_to_four(struct __sk_buff *skb, struct ethhdr *eth,
				       struct ipv6hdr *ip6, void *end)
{
	struct ethhdr eth4;
	struct iphdr ip4 = {};
	struct v6addrs addrs;
	__u32 l4 = ETH_LEN + IP6_LEN;
	__u16 plen = bpf_ntohs(ip6->payload_len);
	__u8 nh = ip6->nexthdr, *l4p = (void *)(ip6 + 1);
	int csum_off;

	if (ip6->hop_limit < 2 || plen == 0 || ETH_LEN + IP6_LEN + plen != skb->len)
		return to_tayga();
	__builtin_memcpy(&addrs.src, &ip6->saddr, 16);
	__builtin_memcpy(&addrs.dst, &ip6->daddr, 16);
	if (!in_prefix(addrs.src) || !in_prefix(addrs.dst) || !mappable(addrs.src[3]) ||
	    !mappable(addrs.dst[3]))
		return to_tayga();
	csum_off = csum_offset(skb, l4, nh, IPPROTO_ICMPV6, l4p, end, 128, 129);
	if (csum_off < 0)
		return to_tayga();

	ip4.version = 4;
	ip4.ihl = 5;
	ip4.tos = (bpf_ntohl(*(__be32 *)ip6) >> 20) & 0xff;
	ip4.tot_len = bpf_htons(plen + IP4_LEN);
	ip4.id = bpf_htons(next_ident());
	ip4.frag_off = plen + IP4_LEN > DF_MIN_LEN ? bpf_htons(IP4_DF) : 0;
	ip4.ttl = ip6->hop_limit - 1;
	ip4.protocol = nh == IPPROTO_ICMPV6 ? IPPROTO_ICMP : nh;
	ip4.saddr = addrs.src[3];
	ip4.daddr = addrs.dst[3];
	ip4.check = fold(bpf_csum_diff(0, 0, (__be32 *)&ip4, sizeof(ip4), 0));
	swap_macs(&eth4, eth, ETH_P_IP);

	if (nh == IPPROTO_ICMPV6) {
		struct pseudo6 ph = {.a = addrs, .len = bpf_htonl(plen), .nh = bpf_htonl(IPPROTO_ICMPV6)};
		__u8 type = l4p[0];

		if (echo_csum(skb, l4, csum_off, &ph, 0, type, type == 128 ? 8 : 0))
			return TC_ACT_SHOT;
	} else if (addr_csum(skb, csum_off, nh, (__be32 *)&addrs, sizeof(addrs),
			     (__be32 *)&ip4.saddr, 8)) {
		return TC_ACT_SHOT;
	}
	return emit(skb, &eth4, &ip4, sizeof(ip4), STAT_6TO4);
}

static __always_inline int four_to_six(struct __sk_buff *skb, struct ethhdr *eth,
				       struct iphdr *ip4, void *end)
{
	struct ethhdr eth6;
	struct ipv6hdr ip6 = {};
	struct v6addrs addrs;
	__be32 v4addrs[2];
	__u32 l4 = ETH_LEN + IP4_LEN;
	__u16 tot = bpf_ntohs(ip4->tot_len), plen = tot - IP4_LEN;
	__u8 proto = ip4->protocol, *l4p = (void *)(ip4 + 1);
	int csum_off;

	if (ip4->ihl != 5 || ip4->ttl < 2 || tot <= IP4_LEN || ETH_LEN + tot != skb->len ||
	    tot + IP6_LEN - IP4_LEN > XLAT_MTU ||
	    (ip4->frag_off & bpf_htons(IP4_FRAG)) ||
	    (!(ip4->frag_off & bpf_htons(IP4_DF)) &&
	     plen + IP6_LEN > (XLAT_MTU < IPV6_MIN_MTU ? XLAT_MTU : IPV6_MIN_MTU)) ||
	    fold(bpf_csum_diff(0, 0, (__be32 *)ip4, IP4_LEN, 0)) != 0 ||
	    !mappable(ip4->saddr) || !mappable(ip4->daddr))
		return to_tayga();
	csum_off = csum_offset(skb, l4, proto, IPPROTO_ICMP, l4p, end, 8, 0);
	if (csum_off < 0)
		return to_tayga();

	v4addrs[0] = ip4->saddr;
	v4addrs[1] = ip4->daddr;
	addrs.src[0] = addrs.dst[0] = bpf_htonl(XLAT_PREFIX0);
	addrs.src[1] = addrs.dst[1] = bpf_htonl(XLAT_PREFIX1);
	addrs.src[2] = addrs.dst[2] = bpf_htonl(XLAT_PREFIX2);
	addrs.src[3] = ip4->saddr;
	addrs.dst[3] = ip4->daddr;
	*(__be32 *)&ip6 = bpf_htonl((6u << 28) | ((__u32)ip4->tos << 20));
	ip6.payload_len = bpf_htons(plen);
	ip6.nexthdr = proto == IPPROTO_ICMP ? IPPROTO_ICMPV6 : proto;
	ip6.hop_limit = ip4->ttl - 1;
	__builtin_memcpy(&ip6.saddr, addrs.src, 16);
	__builtin_memcpy(&ip6.daddr, addrs.dst, 16);
	swap_macs(&eth6, eth, ETH_P_IPV6);

	if (proto == IPPROTO_ICMP) {
		struct pseudo6 ph = {.a = addrs, .len = bpf_htonl(plen), .nh = bpf_htonl(IPPROTO_ICMPV6)};
		__u8 type = l4p[0];

		if (echo_csum(skb, l4, csum_off, &ph, 1, type, type == 8 ? 128 : 129))
			return TC_ACT_SHOT;
	} else if (addr_csum(skb, csum_off, proto, v4addrs, sizeof(v4addrs), (__be32 *)&addrs,
			     sizeof(addrs))) {
		return TC_ACT_SHOT;
	}
	return emit(skb, &eth6, &ip6, sizeof(ip6), STAT_4TO6);
}

SEC("tc")
int vnet64_xlat(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->version != 6)
			return to_tayga();
		return six_to_four(skb, eth, ip6, end);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip4 = (void *)(eth + 1);

		if ((void *)(ip4 + 1) > end || ip4->version != 4)
			return to_tayga();
		return four_to_six(skb, eth, ip4, end);
	}
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Apache-2.0";   /* no GPL-only helper is used */
