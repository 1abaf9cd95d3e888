# The test network of the local SLURM cluster: sourced by local_cluster_up.sh and local_cluster_down.sh.
#
# netns mode (the default where the kernel allows it) makes the fake nodes behave like separate
# machines on their own network:
#
#   root namespace (slurmctld, sbatch/squeue, the tests)   dgh0   198.18.0.1/24
#        | veth
#   namespace distgan-br: bridge dgbr0 (no address, no IP stack in use)
#        | veth               | veth               | veth
#   namespace distgan-n1     distgan-n2           distgan-n3        (each runs one slurmd, in its own
#   dgnet0 198.18.0.11/24    dgnet0 198.18.0.12   dgnet0 198.18.0.13  UTS namespace: hostname n1 …)
#
# Every task, Ray process and DDP worker a node's slurmd starts lives in that node's namespace.
# 198.18.0.0/15 is reserved for benchmarking (RFC 2544): neither public nor a private LAN range.
# Nothing is routed: the node namespaces have only their /24 (no default route) and forwarding off,
# the root side does not forward what arrives on dgh0, and IPv6 is off on every test interface, so
# traffic can only go between the test addresses.  Munge's unix socket (a file) works across
# network namespaces, so authentication needs nothing extra.
#
# loopback mode: every node is 127.0.0.1 (the machine cannot create namespaces, or
# DISTGAN_SLURM_NETWORK=loopback).  The mode in force is written to $RUNDIR/network.json.

NET_MODE_WANTED=${DISTGAN_SLURM_NETWORK:-auto}   # auto | netns | loopback
SUBNET=${DISTGAN_SLURM_SUBNET:-198.18.0}          # the /24 of the test network (first three octets)
NS_PREFIX=distgan-
BRIDGE_NS=${NS_PREFIX}br
BRIDGE=dgbr0
HOST_IF=dgh0            # root-namespace end (slurmctld's address)
HOST_PEER=dgp-h         # its peer, a bridge port
NODE_IF=dgnet0          # every node's interface has the same name, as on a real cluster
HOST_ADDR=$SUBNET.1
HOSTS_TAG="# distgan-local-cluster"

node_addr() {  # node_addr INDEX(0-based) -> 198.18.0.11, .12, …
    echo "$SUBNET.$((11 + $1))"
}
node_ns() { echo "${NS_PREFIX}$1"; }

# Can this machine make namespaces, veth pairs and bridges?  (containers without CAP_NET_ADMIN cannot)
netns_supported() {
    local probe=${NS_PREFIX}probe-$$ ok=1
    command -v ip >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null || return 1
    ip netns add "$probe" 2>/dev/null || return 1
    ip link add dgprobe0 netns "$probe" type veth peer name dgprobe1 netns "$probe" 2>/dev/null || ok=0
    [[ $ok -eq 1 ]] && { ip -n "$probe" link add dgprobebr type bridge 2>/dev/null || ok=0; }
    [[ $ok -eq 1 ]] && { nsenter --net="/run/netns/$probe" unshare --uts true 2>/dev/null || ok=0; }
    ip netns del "$probe" 2>/dev/null
    [[ $ok -eq 1 ]]
}

choose_net_mode() {
    case $NET_MODE_WANTED in
        loopback) echo loopback ;;
        netns) netns_supported && echo netns || return 1 ;;
        auto) if netns_supported; then echo netns; else echo loopback; fi ;;
        *) return 2 ;;
    esac
}

# A node namespace is healthy if it exists and its interface is up with the expected address.
net_ok() {  # net_ok NODE...
    ip netns list 2>/dev/null | grep -qw "$BRIDGE_NS" || return 1
    ip -br addr show dev "$HOST_IF" 2>/dev/null | grep -q " $HOST_ADDR/24" || return 1
    local i=0 n
    for n in "$@"; do
        ip -n "$(node_ns "$n")" -br addr show dev "$NODE_IF" 2>/dev/null | grep -q " $(node_addr $i)/24" || return 1
        i=$((i + 1))
    done
}

net_sysctl() {  # net_sysctl NS KEY=VALUE... (NS "" = the root namespace)
    local ns=$1
    shift
    if [[ -z $ns ]]; then sysctl -qw "$@" >/dev/null; else ip netns exec "$ns" sysctl -qw "$@" >/dev/null; fi
}

net_up() {  # net_up NODE...: build the namespaces, the bridge and the veth pairs
    local existing
    existing=$(ip -4 route show "$SUBNET.0/24" 2>/dev/null | grep -v "dev $HOST_IF" || true)
    [[ -z $existing ]] || { echo "the test subnet $SUBNET.0/24 is already routed here ($existing);" \
        "set DISTGAN_SLURM_SUBNET to an unused /24" >&2; return 1; }
    net_down "$@"
    ip netns add "$BRIDGE_NS" || return 1
    ip -n "$BRIDGE_NS" link set lo up
    net_sysctl "$BRIDGE_NS" net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 net.ipv4.ip_forward=0
    ip -n "$BRIDGE_NS" link add "$BRIDGE" type bridge || return 1
    ip -n "$BRIDGE_NS" link set "$BRIDGE" up
    # the root namespace's end: slurmctld and the login-node side talk to the nodes over it
    ip link add "$HOST_IF" type veth peer name "$HOST_PEER" netns "$BRIDGE_NS" || return 1
    net_sysctl "" "net.ipv6.conf.$HOST_IF.disable_ipv6=1" "net.ipv4.conf.$HOST_IF.forwarding=0"
    ip addr add "$HOST_ADDR/24" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    ip -n "$BRIDGE_NS" link set "$HOST_PEER" master "$BRIDGE" up
    local i=0 n ns
    for n in "$@"; do
        ns=$(node_ns "$n")
        ip netns add "$ns" || return 1
        net_sysctl "$ns" net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 net.ipv4.ip_forward=0
        ip -n "$ns" link set lo up
        ip link add "dgp-$n" netns "$BRIDGE_NS" type veth peer name "$NODE_IF" netns "$ns" || return 1
        ip -n "$ns" addr add "$(node_addr $i)/24" dev "$NODE_IF"
        ip -n "$ns" link set "$NODE_IF" up
        ip -n "$BRIDGE_NS" link set "dgp-$n" master "$BRIDGE" up
        i=$((i + 1))
    done
    # no route beyond the /24 anywhere: say so loudly if something added one
    for n in "$@"; do
        if ip -n "$(node_ns "$n")" route show default 2>/dev/null | grep -q .; then
            echo "namespace $(node_ns "$n") has a default route" >&2
            return 1
        fi
    done
}

# Kill whatever still runs in a namespace (job processes orphaned by a dead slurmd), then delete it.
net_kill_ns() {  # net_kill_ns NS
    local pids p
    pids=$(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')
    [[ -n ${pids// /} ]] || return 0
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 30); do
        pids=$(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')
        [[ -n ${pids// /} ]] || return 0
        sleep 0.1
    done
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
}

net_down() {  # net_down: remove every distgan- namespace (whatever the node list) and dgh0
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS_PREFIX" || true); do
        net_kill_ns "$ns"
        ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$HOST_IF" 2>/dev/null || true   # normally gone with its peer in $BRIDGE_NS
}

# /etc/hosts: the node names resolve to the node addresses (netns) or 127.0.0.1 (loopback).
hosts_clear() {
    if grep -q " $HOSTS_TAG\$" /etc/hosts 2>/dev/null; then
        local hosts
        hosts=$(grep -v " $HOSTS_TAG\$" /etc/hosts)
        printf '%s\n' "$hosts" >/etc/hosts   # in place: /etc/hosts may be a bind mount (no mv)
    fi
}

hosts_set() {  # hosts_set MODE NODE...
    local mode=$1 i=0 n lines=""
    shift
    for n in "$@"; do
        if [[ $mode == netns ]]; then lines+="$(node_addr $i) $n $HOSTS_TAG"$'\n'; else lines+="127.0.0.1 $n $HOSTS_TAG"$'\n'; fi
        i=$((i + 1))
    done
    hosts_clear
    for n in "$@"; do
        if grep -v " $HOSTS_TAG\$" /etc/hosts | grep -qw "$n"; then
            echo "/etc/hosts already maps '$n' (not a line of ours): remove it first" >&2
            return 1
        fi
    done
    printf '%s' "$lines" >>/etc/hosts
}

# $RUNDIR/network.json: what the tests read to know which mode ran and where each node is.
net_describe() {  # net_describe MODE NODE...
    local mode=$1 i=0 n sep=""
    shift
    printf '{"mode": "%s", "subnet": "%s.0/24", "host": {"interface": "%s", "address": "%s"}, "nodes": {' \
        "$mode" "$SUBNET" "$([[ $mode == netns ]] && echo "$HOST_IF" || echo lo)" \
        "$([[ $mode == netns ]] && echo "$HOST_ADDR" || echo 127.0.0.1)"
    for n in "$@"; do
        if [[ $mode == netns ]]; then
            printf '%s"%s": {"netns": "%s", "interface": "%s", "address": "%s"}' "$sep" "$n" "$(node_ns "$n")" \
                "$NODE_IF" "$(node_addr $i)"
        else
            printf '%s"%s": {"netns": null, "interface": "lo", "address": "127.0.0.1"}' "$sep" "$n"
        fi
        sep=", "
        i=$((i + 1))
    done
    printf '}}\n'
}
