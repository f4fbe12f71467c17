#!/usr/bin/env bash
# Builds a kind node image for Kubernetes $KUBE_VERSION from upstream sources, offline: no
# container registry and no Docker engine (Debian's podman), and caches it as an image archive
# under $WA8S_CACHE/kind/. Prints the image name on stdout; logs go to stderr.
#
#   e2e/scripts/kind-node-image.sh
#
# Measured on 2 shared cores: cold, after build-binaries.sh's binaries, ~7 min the first time
# (two debootstraps, cached as rootfs tarballs) and ~100 s after a recipe change; warm, 0 s when
# the image is in podman's store, ~10 s to `podman load` it from the archive (~780 MB).
#
# The image holds what kind v0.33.0's node image holds (images/base/Dockerfile plus what
# pkg/build/nodeimage adds), assembled from:
#   - a Debian rootfs from debootstrap with the packages kind's base Dockerfile installs, and
#     kind's images/base/files (systemd units, entrypoint, containerd config) from the kind module;
#   - containerd, ctr, containerd-shim-runc-v2, crictl, kubeadm, kubelet, kubectl built by
#     build-binaries.sh; Debian's runc and CNI plugins;
#   - /kind/version and /kind/manifests/default-cni.yaml as kind's image builder writes them;
#   - the images kubeadm and kind expect, preloaded into the node's containerd (namespace k8s.io).
# The cache key covers every input version and this recipe (this script, e2e/kind/*.Containerfile,
# e2e/kind/iptables-wrapper, e2e/pause/pause.c, third_party/kindnetd), so any change builds a
# new image.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"

# shellcheck disable=SC2034 # read by log() in lib/common.sh
LOG_PREFIX=kind-node-image
# shellcheck source=lib/common.sh
source "$here/lib/common.sh"

# The packages kind's images/base/Dockerfile installs (all in Debian), plus Debian's runc and
# CNI plugins (kind builds those from source; the Debian builds are what the project's local
# node uses too) and socat (port forwarding). kind starts from debian-slim; minbase is that.
NODE_PACKAGES="systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,fuse-overlayfs,nfs-common,open-iscsi,e2fsprogs,bash,ca-certificates,curl,jq,procps,socat,runc,containernetworking-plugins"
# The userland kube-proxy and kindnetd exec (upstream: distroless-iptables).
NET_PACKAGES="iptables,nftables,conntrack"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# --- cache key ------------------------------------------------------------------------------
recipe_hash="$(
  {
    echo "kube=$KUBE_VERSION etcd=$ETCD_VERSION containerd=$CONTAINERD_VERSION crictl=$CRI_TOOLS_VERSION"
    echo "coredns=$COREDNS_VERSION kindnetd=$KINDNETD_VERSION knp=$KINDNETD_KUBE_NETWORK_POLICIES kind=$KIND_VERSION suite=$KIND_NODE_DEBIAN_SUITE"
    echo "node=$NODE_PACKAGES net=$NET_PACKAGES"
    cd "$repo" && find e2e/scripts/kind-node-image.sh e2e/kind/*.Containerfile e2e/kind/iptables-wrapper \
      e2e/pause/pause.c third_party/kindnetd -type f -not -name '*.md' | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -c1-12
)"
image="localhost/wa8s/kind-node:$KUBE_VERSION-$recipe_hash"
cache_dir="$WA8S_CACHE/kind"
archive="$cache_dir/node-$KUBE_VERSION-$recipe_hash.tar"
mkdir -p "$cache_dir" "$WA8S_CACHE/build"

command -v podman >/dev/null || apt_install podman
command -v runc >/dev/null || apt_install runc
# The project's podman settings (runc instead of crun, ulimits): see the file.
export CONTAINERS_CONF="$repo/e2e/kind/containers.conf"

# --- warm paths: already in podman's store, or in the archive cache ----------------------------
if podman image exists "$image"; then
  log "$image is in podman's store"
  echo "$image"; exit 0
fi
if [ -f "$archive" ]; then
  log "loading $image from $archive"
  podman load -q -i "$archive" >&2
  podman image exists "$image" || die "$archive did not hold $image"
  echo "$image"; exit 0
fi

# --- cold build -------------------------------------------------------------------------------
command -v debootstrap >/dev/null || apt_install debootstrap
command -v jq >/dev/null || apt_install jq
command -v gcc >/dev/null || apt_install gcc libc6-dev
log "building $image (cold)"
t0=$SECONDS

# kind's module source: images/base/files and the node image builder's manifests.
kind_src="$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION"
if [ ! -d "$kind_src/images/base/files" ]; then
  (cd "$WA8S_CACHE" && GOFLAGS=-mod=mod go mod download "sigs.k8s.io/kind@$KIND_VERSION")
fi
[ -d "$kind_src/images/base/files" ] || die "sigs.k8s.io/kind@$KIND_VERSION has no images/base/files at $kind_src"

# What kind's clean-install removes after apt (images/base/files/usr/local/bin/clean-install),
# and the build host's hostname and resolver (podman and kind provide their own).
ROOTFS_CLEAN=('var/cache/apt/archives/*.deb' 'var/cache/debconf/*' 'var/lib/apt/lists/*' 'var/log/*' 'tmp/*'
  'var/tmp/*' 'usr/share/doc/*' 'usr/share/doc-base/*' 'usr/share/man/*' 'usr/share/local/*' etc/hostname etc/resolv.conf)
# Debian rootfs tarballs are cached by suite, package list and cleanup (debootstrap downloads
# ~100 MB and takes minutes). Ownership, modes and xattrs are kept (--numeric-owner --xattrs).
debootstrap_cached() {
  local what="$1" packages="$2" out key dir p
  key="$(echo "$KIND_NODE_DEBIAN_SUITE $packages ${ROOTFS_CLEAN[*]}" | sha256sum | cut -c1-12)"
  out="$cache_dir/rootfs-$what-$KIND_NODE_DEBIAN_SUITE-$key.tar"
  if [ ! -f "$out" ]; then
    dir="$WA8S_CACHE/build/rootfs-$what-$key"
    rm -rf "$dir"
    log "debootstrap $KIND_NODE_DEBIAN_SUITE ($what rootfs; a few minutes)"
    debootstrap --variant=minbase --include="$packages" "$KIND_NODE_DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR" >"$dir.log" 2>&1 \
      || { tail -20 "$dir.log" >&2; die "debootstrap failed (log: $dir.log)"; }
    # shellcheck disable=SC2086 # the patterns are globs inside the new rootfs
    for p in "${ROOTFS_CLEAN[@]}"; do rm -rf "${dir:?}"/$p; done
    tar --numeric-owner --xattrs -C "$dir" -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    rm -rf "$dir" "$dir.log"
    # An older package list's or cleanup's rootfs is no longer used by this recipe.
    find "$cache_dir" -maxdepth 1 -name "rootfs-$what-$KIND_NODE_DEBIAN_SUITE-*.tar" ! -path "$out" -delete
  fi
  echo "$out"
}
node_rootfs_tar="$(debootstrap_cached node "$NODE_PACKAGES")"
net_rootfs_tar="$(debootstrap_cached net "$NET_PACKAGES")"

# Binaries: build-binaries.sh builds each once (holding $WA8S_CACHE/build/.lock) and caches it.
declare -A bin
while IFS='=' read -r name path; do bin[$name]="$path"; done < <(
  "$here/build-binaries.sh" kubeadm kubelet kubectl kube-apiserver kube-controller-manager \
    kube-scheduler kube-proxy etcd containerd ctr containerd-shim-runc-v2 crictl coredns kindnetd
)
for n in kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd \
  containerd ctr containerd-shim-runc-v2 crictl coredns kindnetd; do
  [ -x "${bin[$n]:-}" ] || die "build-binaries.sh did not produce $n"
done

# The assembly below is heavy on disk and CPU (tar, podman): one at a time, like the Go builds.
exec 9>"$WA8S_CACHE/build/.lock"
flock 9
if podman image exists "$image"; then echo "$image"; exit 0; fi   # built while we waited

work="$WA8S_CACHE/build/kind-node-$recipe_hash"
builder="wa8s-kind-build-$recipe_hash"
tmp_images=()
cleanup() {
  podman rm -f "$builder" >/dev/null 2>&1 || true
  [ ${#tmp_images[@]} -eq 0 ] || podman rmi -f "${tmp_images[@]}" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"; mkdir -p "$work"

# --- the images kubeadm and kind expect ---------------------------------------------------------
# kubeadm's list (registry.k8s.io/kube-apiserver:v1.35.4, etcd:3.6.6-0, coredns/coredns:v1.13.1,
# pause:3.10.1 ...), read from our kubeadm so the tags always match it.
mapfile -t kubeadm_images < <("${bin[kubeadm]}" config images list --kubernetes-version "$KUBE_VERSION" 2>/dev/null)
[ ${#kubeadm_images[@]} -ge 6 ] || die "kubeadm config images list gave: ${kubeadm_images[*]}"
image_for() { printf '%s\n' "${kubeadm_images[@]}" | grep -E "/$1:" | head -1; }
# kind's containerd config names its own sandbox image (pause:3.10 in v0.33.0); kind's builder
# preloads that instead of kubeadm's pause, we tag the same pause with both names.
sandbox_image="$(sed -n 's/^[[:space:]]*sandbox_image = "\(.*\)"/\1/p' "$kind_src/images/base/files/etc/containerd/config.toml")"
[ -n "$sandbox_image" ] || die "no sandbox_image in kind's containerd config"
kindnetd_image="$(sed -n 's/^const kindnetdImage = "\(.*\)"/\1/p' "$kind_src/pkg/build/nodeimage/const_cni.go")"
[ "${kindnetd_image##*:}" = "$KINDNETD_VERSION" ] \
  || die "kind $KIND_VERSION runs $kindnetd_image, third_party/kindnetd is $KINDNETD_VERSION: update it"

# The base of the static images: what distroless/static gives upstream's images.
base="$work/static-base"
mkdir -p "$base/etc/ssl/certs" "$base/tmp"
chmod 1777 "$base/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$base/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$base/etc/group"
echo 'hosts: files dns' >"$base/etc/nsswitch.conf"
cp /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/"

# The iptables rootfs for kube-proxy and kindnetd, with the mode-selecting wrapper installed as
# every iptables alternative.
netbase="localhost/wa8s/kind-netbase:$recipe_hash"
mkdir -p "$work/netroot"
tar --numeric-owner --xattrs -C "$work/netroot" -xf "$net_rootfs_tar"
install -m 0755 "$repo/e2e/kind/iptables-wrapper" "$work/netroot/usr/sbin/iptables-wrapper"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf /usr/sbin/iptables-wrapper "$work/netroot/etc/alternatives/$n"
done
tar --numeric-owner --xattrs -C "$work/netroot" -c . | podman import -q - "$netbase" >/dev/null
tmp_images+=("$netbase")
rm -rf "$work/netroot"

# build_image CONTAINERFILE TAG FILE... : a podman build whose context holds static-base/ as
# base/ and the given files in bin/. COPY-only Containerfiles: no RUN, nothing is pulled.
build_image() {
  local file="$1" tag="$2" ctx
  shift 2
  ctx="$work/ctx-$(basename "$file" .Containerfile)-$RANDOM"
  mkdir -p "$ctx/bin"
  cp -a "$base" "$ctx/base"
  cp "$@" "$ctx/bin/"
  podman build -q --pull=never --build-arg "NETBASE=$netbase" -f "$repo/e2e/kind/$file" -t "$tag" "$ctx" >/dev/null
  tmp_images+=("$tag")
  rm -rf "$ctx"
  mkdir -p "$work/images"
  # One OCI archive per image; its ref.name annotation is the full name, which ctr keeps.
  podman save -q --format oci-archive -o "$work/images/$(echo "$tag" | tr '/:' '__').tar" "$tag"
  log "image $tag"
}
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  build_image static.Containerfile "$(image_for "$c")" "${bin[$c]}"
done
build_image net.Containerfile "$(image_for kube-proxy)" "${bin[kube-proxy]}"
# kubeadm expects etcd at its own tag (3.6.6-0 for 1.35); ours is $ETCD_VERSION (a newer patch
# release of the same minor, built by build-binaries.sh), tagged with kubeadm's name so the
# static pod finds it preloaded.
build_image static.Containerfile "$(image_for etcd)" "${bin[etcd]}"
build_image coredns.Containerfile "$(image_for coredns)" "${bin[coredns]}"
gcc -static -O2 -s -o "$work/pause" "$repo/e2e/pause/pause.c"
build_image pause.Containerfile "$(image_for pause)" "$work/pause"
build_image kindnetd.Containerfile "$kindnetd_image" "${bin[kindnetd]}"
# default-storage.yaml is left out: kind's local-path-provisioner (and helper) images would be
# two more builds for a StorageClass the project does not use; without the manifest,
# `kind create cluster` warns and installs its fallback (a `standard` host-path StorageClass).

# --- the node rootfs (kind's images/base/Dockerfile, step by step) ------------------------------
root="$work/node"
mkdir -p "$root"
tar --numeric-owner --xattrs -C "$root" -xf "$node_rootfs_tar"
files="$kind_src/images/base/files"
install -m 0755 "$files"/usr/local/bin/* "$root/usr/local/bin/"
mkdir -p "$root/kind/bin" "$root/LICENSES" "$root/etc/containerd" "$root/etc/default" \
  "$root/etc/sysctl.d" "$root/etc/systemd/system/kubelet.service.d"
install -m 0644 "$files"/kind/README.txt "$root/kind/"
install -m 0755 "$files"/kind/bin/* "$root/kind/bin/"
chmod 0755 "$root/kind" "$root/kind/bin"
install -m 0644 "$files"/LICENSES/* "$root/LICENSES/"
install -m 0644 "$files"/etc/crictl.yaml "$root/etc/"
install -m 0644 "$files"/etc/containerd/* "$root/etc/containerd/"
install -m 0644 "$files"/etc/default/* "$root/etc/default/"
install -m 0644 "$files"/etc/sysctl.d/* "$root/etc/sysctl.d/"
find "$files/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 {} "$root/etc/systemd/system/" \;
install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$root/etc/systemd/system/kubelet.service.d/"
# Units a container must not start (kind's list); paths under usr/ because /lib is a symlink.
find "$root/usr/lib/systemd/system/sysinit.target.wants/" -name "systemd-tmpfiles-setup.service" -delete
rm -f "$root"/usr/lib/systemd/system/multi-user.target.wants/* "$root"/etc/systemd/system/*.wants/* \
  "$root"/usr/lib/systemd/system/local-fs.target.wants/* "$root"/usr/lib/systemd/system/sockets.target.wants/*udev* \
  "$root"/usr/lib/systemd/system/sockets.target.wants/*initctl* "$root"/usr/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$root/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$root/sbin/init"
systemctl --root="$root" enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
systemctl --root="$root" mask systemd-binfmt.service >/dev/null 2>&1
mkdir -p "$root/etc/kubernetes/manifests"
# The build stage: containerd, runc (Debian's, at kind's path), crictl, CNI plugins.
install -m 0755 "${bin[containerd]}" "${bin[ctr]}" "${bin[containerd-shim-runc-v2]}" "${bin[crictl]}" "$root/usr/local/bin/"
ln -sf /usr/sbin/runc "$root/usr/local/sbin/runc"
mkdir -p "$root/opt/cni/bin"
# kind's four plugins, from the rootfs's own containernetworking-plugins (Debian puts them in
# /usr/lib/cni; kind's containerd config and kindnetd's CNI config look in /opt/cni/bin).
for p in host-local loopback ptp portmap; do install -m 0755 "$root/usr/lib/cni/$p" "$root/opt/cni/bin/"; done
"${bin[ctr]}" oci spec \
  | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | jq 'del(.process.rlimits)' >"$root/etc/containerd/cri-base.json"
# What kind's node image builder adds: the Kubernetes binaries at /usr/bin, /kind/version and
# the default CNI manifest (const_cni.go's text, its image name filled in).
install -m 0755 "${bin[kubeadm]}" "${bin[kubelet]}" "${bin[kubectl]}" "$root/usr/bin/"
printf '%s' "$KUBE_VERSION" >"$root/kind/version"
mkdir -p "$root/kind/manifests"
awk '/^const defaultCNIManifest = `/ { on = 1; sub(/^const defaultCNIManifest = `/, ""); print; next }
     on && /^`$/ { exit } on { print }' "$kind_src/pkg/build/nodeimage/const_cni.go" \
  | sed "s#\` + kindnetdImage + \`#$kindnetd_image#" >"$root/kind/manifests/default-cni.yaml"
grep -q "image: $kindnetd_image" "$root/kind/manifests/default-cni.yaml" || die "could not extract kind's CNI manifest"

node_base="localhost/wa8s/kind-node-base:$recipe_hash"
tar --numeric-owner --xattrs -C "$root" -c . | podman import -q \
  --change 'ENV container=docker' --change 'STOPSIGNAL SIGRTMIN+3' \
  --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' - "$node_base" >/dev/null
tmp_images+=("$node_base")
rm -rf "$root"

# --- preload: containerd inside the node, as kind's builder does --------------------------------
# A privileged container running `sleep`, containerd started in it, each archive imported with
# kind's flags (pinned, no unpack), containerd stopped, the container committed. The ulimits:
# without CAP_SYS_RESOURCE podman cannot raise nofile/nproc above the host's (see
# /work/shared/notes/cluster-lab.md).
# /run and /tmp are tmpfs (as kind runs nodes) so containerd's sockets stay out of the image.
podman run -d --name "$builder" --privileged --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  --tmpfs /run --tmpfs /tmp --unsetenv TERM --entrypoint sleep "$node_base" infinity >/dev/null
# ctr warns about cgroup v1 on every call; only that line is dropped.
builder_ctr() {
  podman exec -i "$builder" ctr --namespace=k8s.io "$@" 2> >(grep -v 'DEPRECATION: The support for cgroup v1' >&2)
}
podman exec -d "$builder" sh -c 'containerd >/run/containerd-preload.log 2>&1 & echo $! >/run/containerd-preload.pid; wait' >/dev/null
deadline=$((SECONDS + 60))
until podman exec "$builder" ctr version >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { podman exec "$builder" cat /run/containerd-preload.log >&2 || true; die "containerd in the build container did not start in 60 s"; }
  sleep 1
done
for a in "$work"/images/*.tar; do
  builder_ctr images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - <"$a" >/dev/null
done
builder_ctr images tag --force "$(image_for pause)" "$sandbox_image" >/dev/null
builder_ctr images label "$sandbox_image" io.cri-containerd.pinned=pinned >/dev/null
preloaded="$(builder_ctr images list -q | grep -v '^sha256:' | sort)"
log "preloaded: $(echo "$preloaded" | tr '\n' ' ')"
for want in "${kubeadm_images[@]}" "$sandbox_image" "$kindnetd_image"; do
  echo "$preloaded" | grep -qx "$want" || die "$want is missing from the node's containerd"
done
podman exec "$builder" sh -c 'kill "$(cat /run/containerd-preload.pid)"'
deadline=$((SECONDS + 30))
while podman exec "$builder" sh -c 'ctr version' >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || die "containerd in the build container did not stop in 30 s"
  sleep 1
done
podman stop -t 0 "$builder" >/dev/null   # only `sleep` is left, which ignores SIGTERM as PID 1
# kind's commit restores the entrypoint; CMD is cleared so nothing of `sleep infinity` remains.
podman commit -q --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
  "$builder" "$image" >/dev/null
podman rm -f "$builder" >/dev/null

# --- cache ---------------------------------------------------------------------------------------
podman save -q -o "$archive.tmp" "$image"
mv "$archive.tmp" "$archive"
# Older recipes' images of this Kubernetes version are dead weight (~800 MB each): drop them
# (an image a container still runs stays in podman's store).
for old in "$cache_dir"/node-"$KUBE_VERSION"-*.tar; do
  [ "$old" = "$archive" ] && continue
  rm -f "$old"
  old="$(basename "$old" .tar)"
  podman rmi "localhost/wa8s/kind-node:${old#node-}" >/dev/null 2>&1 || true
done
log "built $image in $((SECONDS - t0)) s, cached at $archive ($(du -h "$archive" | cut -f1))"
echo "$image"
