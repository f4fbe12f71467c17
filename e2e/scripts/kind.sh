#!/usr/bin/env bash
# A real multi-node kind cluster on this machine, offline: kind v0.33.0 (built from the Go
# module proxy) with its podman provider, a node image built from upstream sources by
# kind-node-image.sh, and a local registry that stands in for ghcr.io.
#
#   e2e/scripts/kind.sh up   [--name NAME] [--workers N] [--registry-port PORT] [--fast-eviction]
#                            [--node-registry-hosts]
#   e2e/scripts/kind.sh down [--name NAME]
#   e2e/scripts/kind.sh load [--name NAME] TAR...     # OCI/docker image tarballs into every node
#
# Defaults: name wa8s, 2 workers, registry port 5001 (5000 is the quickstart's registry).
# State (kubeconfig, registry data and pids, kind config) lives in $WA8S_CACHE/run/kind-NAME/;
# `down` removes it and what `up` made, and leaves the binary and image caches alone.
#
# Measured on 2 shared cores: `up` with the node image in podman's store ~60 s, from its archive
# ~65 s, after a recipe change ~145 s, with fresh debootstraps ~400 s (plus, once, ~20 min of
# Go builds in build-binaries.sh); `down` ~25 s.
#
# Known limit on these machines: the kernel has no nft `queue` support (no modules; `nft add
# rule inet t c queue num 100 bypass` answers "No such file or directory"), so kindnetd's
# NetworkPolicy engine logs "initial nftables sync failed" and NetworkPolicies are not enforced.
# Pod networking, Services (kube-proxy, iptables mode) and DNS are unaffected.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"

# shellcheck disable=SC2034 # read by log() in lib/common.sh
LOG_PREFIX=kind
# shellcheck source=lib/common.sh
source "$here/lib/common.sh"

cmd="${1:-}"; [ $# -gt 0 ] && shift
name=wa8s workers=2 registry_port=5001 fast_eviction= node_registry_hosts=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --registry-port) registry_port="$2"; shift 2 ;;
    # Pods of an unreachable node are evicted after 20 s instead of 5 minutes (the
    # DefaultTolerationSeconds admission plugin), so a test can stop a node and wait.
    --fast-eviction) fast_eviction=1; shift ;;
    # The nodes configured by hand for the local registry, as wa8s 0.1 users had to
    # (config_path in containerd's config, a hosts.toml per node): the upgrade test's cluster.
    --node-registry-hosts) node_registry_hosts=1; shift ;;
    -*) die "unknown option $1" ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ "$name" =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "bad cluster name '$name'"
[[ "$workers" =~ ^[0-9]+$ ]] || die "bad worker count '$workers'"

state="$WA8S_CACHE/run/kind-$name"
# kind's podman provider (still "experimental" in kind) and this project's podman settings.
export KIND_EXPERIMENTAL_PROVIDER=podman
export CONTAINERS_CONF="$repo/e2e/kind/containers.conf"

command -v podman >/dev/null || apt_install podman
command -v runc >/dev/null || apt_install runc
kind="$(kind_bin_dir)/kind"
[ -x "$kind" ] || kind="$("$here/build-binaries.sh" kind | sed -n 's/^kind=//p')"
kubectl="$(kube_bin_dir)/kubectl"
[ -x "$kubectl" ] || kubectl="$("$here/build-binaries.sh" kubectl | sed -n 's/^kubectl=//p')"

cluster_exists() { "$kind" get clusters 2>/dev/null | grep -qx "$name"; }

# A registry process we started, by the PID we recorded (never by name): the PID must still be
# a docker-registry serving this cluster's config, or the file is stale.
registry_alive() {
  local pidfile="$1" pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "docker-registry serve $state/"
}

# start_registry TAG ADDR: the distribution registry (Debian's docker-registry) on ADDR, on the
# cluster's storage. Two processes share it: one on 127.0.0.1 (the host pushes over loopback,
# where the project's clients allow plain HTTP) and one on the kind network's gateway (the
# nodes pull). Content is addressed by digest, so two servers on one directory agree.
start_registry() {
  local tag="$1" addr="$2" conf="$state/registry-$1.yml" pidfile="$state/registry-$1.pid"
  if registry_alive "$pidfile"; then return; fi
  cat >"$conf" <<EOF
version: 0.1
log: { level: warn }
storage:
  filesystem: { rootdirectory: $state/registry }
  delete: { enabled: true }
http:
  addr: $addr
EOF
  # Its own session, so it outlives this script and a signal to our process group.
  setsid docker-registry serve "$conf" </dev/null >"$state/registry-$tag.log" 2>&1 &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null "http://$addr/v2/"; do
    registry_alive "$pidfile" || { cat "$state/registry-$tag.log" >&2; die "the registry on $addr exited"; }
    [ $SECONDS -lt $deadline ] || die "the registry on $addr did not answer in 30 s"
    sleep 0.5
  done
}

stop_registry() {
  local pidfile="$state/registry-$1.pid" pid
  if registry_alive "$pidfile"; then
    pid="$(cat "$pidfile")"
    kill "$pid"
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null; do
      [ $SECONDS -lt $deadline ] || { kill -9 "$pid" 2>/dev/null || true; break; }
      sleep 0.2
    done
  fi
  rm -f "$pidfile"
}

# wait_for DESCRIPTION SECONDS COMMAND...: every wait has a deadline.
wait_for() {
  local what="$1" limit="$2" deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "timed out after ${limit}s waiting for $what"; return 1; }
    sleep 2
  done
}

kc() { "$kubectl" --kubeconfig "$state/kubeconfig" "$@"; }

# Every line of `kubectl get` reports the wanted value in its second column.
all_nodes_ready() {
  local out
  out="$(kc get nodes --no-headers -o custom-columns=N:.metadata.name,R:'.status.conditions[?(@.type=="Ready")].status')"
  [ "$(echo "$out" | grep -c .)" -eq "$(kind_nodes | grep -c .)" ] && ! echo "$out" | awk '$2 != "True"' | grep -q .
}
system_pods_ready() {
  local out
  out="$(kc -n kube-system get pods --no-headers -o custom-columns=N:.metadata.name,R:'.status.conditions[?(@.type=="Ready")].status')"
  [ -n "$out" ] && ! echo "$out" | awk '$2 != "True"' | grep -q .
}

kind_nodes() { "$kind" get nodes --name "$name" 2>/dev/null; }

kind_gateway() {
  podman network inspect kind --format '{{range .Subnets}}{{.Gateway}} {{end}}' 2>/dev/null \
    | tr ' ' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | head -1
}

up() {
  command -v docker-registry >/dev/null || apt_install docker-registry
  command -v curl >/dev/null || apt_install curl
  local t0=$SECONDS image
  mkdir -p "$state/registry"
  # WA8S_KIND_NODE_IMAGE runs another (already loaded) node image instead of building ours.
  image="${WA8S_KIND_NODE_IMAGE:-$("$here/kind-node-image.sh")}"
  log "node image: $image ($((SECONDS - t0)) s)"

  start_registry loopback "127.0.0.1:$registry_port"

  # kind's podman provider always mounts /lib/modules into the nodes; this VM's kernel has no
  # modules and no /lib/modules, so podman fails ("statfs /lib/modules: no such file or
  # directory"). An empty directory satisfies it; `down` removes it again with the last cluster.
  if [ ! -e /lib/modules ]; then
    mkdir /lib/modules
    touch "$WA8S_CACHE/run/kind-created-lib-modules"
  fi

  if cluster_exists; then
    log "cluster $name exists; not recreating it"
  else
    # Whether the shared `kind` network was there before us: `down` removes it only if not.
    rm -f "$state/network-preexisted"
    if podman network exists kind; then touch "$state/network-preexisted"; fi
    # Only what this machine needs differs from kind's defaults (systemd cgroup driver kept):
    # - failCgroupV1: false — the host is cgroup v1 (hybrid) and Kubernetes 1.35's kubelet
    #   refuses v1 otherwise;
    # - restrict_oom_score_adj — without CAP_SYS_RESOURCE runc cannot lower oom_score_adj and
    #   every sandbox fails ("can't get final child's PID from pipe"); kind sets it only rootless;
    #   (kind's containerd.service keeps OOMScoreAdjust=-999: systemd in a container ignores
    #   the EPERM, measured: `systemd-run -p OOMScoreAdjust=-999` in a node runs at 0);
    # No registry configuration on the nodes: the chart's node installer writes containerd's
    # hosts.toml (and config_path) from operator.mirrors / operator.insecureRegistries, as on
    # an air-gapped cluster, and the kind suite checks that pulls go through it.
    {
      cat <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
name: $name
containerdConfigPatches:
- |-
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true
EOF
      if [ -n "$node_registry_hosts" ]; then
        cat <<'EOF'
- |-
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
EOF
      fi
      cat <<'EOF'
kubeadmConfigPatches:
- |
  kind: KubeletConfiguration
  failCgroupV1: false
EOF
      if [ -n "$fast_eviction" ]; then
        # kind writes kubeadm's v1beta3 ClusterConfiguration (extraArgs is a map) for 1.35.
        cat <<'EOF'
- |
  kind: ClusterConfiguration
  apiServer:
    extraArgs:
      default-not-ready-toleration-seconds: "20"
      default-unreachable-toleration-seconds: "20"
EOF
      fi
      echo "nodes:"
      local role i
      for ((i = 0; i <= workers; i++)); do
        role=worker; [ $i -eq 0 ] && role=control-plane
        cat <<EOF
- role: $role
EOF
      done
    } >"$state/kind-config.yaml"
    log "creating cluster $name: 1 control plane, $workers workers"
    # kind's own wait (the control plane Ready) has a deadline; ours below covers the workers.
    timeout 900 "$kind" create cluster --name "$name" --image "$image" --config "$state/kind-config.yaml" \
      --kubeconfig "$state/kubeconfig" --wait 5m >&2 || die "kind create cluster failed (kind export logs --name $name)"
  fi
  "$kind" get kubeconfig --name "$name" >"$state/kubeconfig"

  # The nodes reach the host at the kind network's gateway: the registry listens there too.
  local gw
  gw="$(kind_gateway)"
  [ -n "$gw" ] || die "no IPv4 gateway on the podman network kind"
  start_registry gateway "$gw:$registry_port"
  if [ -n "$node_registry_hosts" ]; then
    # containerd reads hosts.toml at each pull: written after the nodes started is enough.
    local node
    for node in $(kind_nodes); do
      podman exec "$node" mkdir -p /etc/containerd/certs.d/ghcr.io
      printf 'server = "https://ghcr.io"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
        "$gw:$registry_port" | podman exec -i "$node" sh -c 'cat >/etc/containerd/certs.d/ghcr.io/hosts.toml'
    done
  fi
  # kind's local-registry convention (KEP-1755): tell tools where the registry is.
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "127.0.0.1:$registry_port"
    hostFromContainerRuntime: "$gw:$registry_port"
    help: "helm install wa8s with this registry (hostFromContainerRuntime) as the mirror of ghcr.io in operator.mirrors and in operator.insecureRegistries: its node installer points the nodes at it"
EOF

  wait_for "all nodes Ready" 300 all_nodes_ready || { kc get nodes -o wide >&2; exit 1; }
  wait_for "kube-system pods Ready" 300 system_pods_ready || { kc -n kube-system get pods -o wide >&2; exit 1; }
  kc get nodes -o wide >&2
  log "up in $((SECONDS - t0)) s"
  echo "kubeconfig=$state/kubeconfig"
  echo "kubectl=$kubectl"
  echo "registry=127.0.0.1:$registry_port"
  echo "registry_from_nodes=$gw:$registry_port"
  echo "ghcr_mirror=ghcr.io/<repo> -> http://$gw:$registry_port/<repo>"
}

down() {
  if cluster_exists; then
    log "deleting cluster $name"
    # Our kubeconfig, so kind leaves ~/.kube/config alone (it removes the cluster's context).
    timeout 300 "$kind" delete cluster --name "$name" --kubeconfig "$state/kubeconfig" >&2
  fi
  stop_registry gateway
  stop_registry loopback
  # The network kind made, unless it was there before `up` or another cluster still uses it.
  if [ -d "$state" ] && [ ! -f "$state/network-preexisted" ] && podman network exists kind \
    && [ -z "$(podman ps -a -q --filter network=kind)" ]; then
    podman network rm kind >/dev/null
  fi
  # /var volumes kind labels with the node names, left behind when a create failed midway.
  podman volume ls --format '{{.Name}} {{range $k, $v := .Labels}}{{$k}} {{end}}' \
    | awk -v re="^$name-(control-plane|worker)[0-9]*$" '{ for (i = 2; i <= NF; i++) if ($i ~ re) { print $1; break } }' \
    | while read -r vol; do podman volume rm "$vol" >/dev/null 2>&1 || true; done
  if [ -f "$WA8S_CACHE/run/kind-created-lib-modules" ] && [ -z "$("$kind" get clusters 2>/dev/null)" ]; then
    rmdir /lib/modules 2>/dev/null || true
    rm -f "$WA8S_CACHE/run/kind-created-lib-modules"
  fi
  rm -rf "$state"
  log "cluster $name is down"
}

load() {
  [ ${#args[@]} -gt 0 ] || die "usage: kind.sh load [--name NAME] TAR..."
  cluster_exists || die "no cluster $name (kind.sh up --name $name)"
  for tar in "${args[@]}"; do
    [ -f "$tar" ] || die "no such file: $tar"
    log "loading $tar"
    timeout 600 "$kind" load image-archive --name "$name" "$tar" >&2
  done
}

case "$cmd" in
  up) up ;;
  down) down ;;
  load) load ;;
  *) die "usage: kind.sh up|down|load [--name NAME] [--workers N] [TAR...]" ;;
esac
