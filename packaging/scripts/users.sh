# Sourced by the maintainer scripts (deb preinst / rpm %pre): create the
# system users and refuse a setup where the proxy identity is unsafe.
# Capture exempts the proxy's traffic by UID and GID, so a mesh-proxy that is
# root, or that shares its UID/GID with anyone, would exempt more than Envoy.
mesh_fail() { echo "mesh packaging: $*" >&2; exit 1; }

mesh_ensure_user() {  # name home comment
  name=$1 home=$2 comment=$3
  if getent passwd "$name" >/dev/null; then
    uid=$(getent passwd "$name" | cut -d: -f3)
    gid=$(getent passwd "$name" | cut -d: -f4)
    [ "$uid" != 0 ] || mesh_fail "user $name exists with UID 0; refusing (it must be a dedicated system user)"
    [ "$gid" != 0 ] || mesh_fail "user $name exists with GID 0; refusing (it must have its own group)"
    same=$(getent passwd | awk -F: -v u="$uid" '$3 == u' | wc -l)
    [ "$same" = 1 ] || mesh_fail "UID $uid of $name is shared with another user; refusing"
    same=$(getent passwd | awk -F: -v g="$gid" '$4 == g' | wc -l)
    [ "$same" = 1 ] || mesh_fail "GID $gid of $name is the primary group of another user; refusing"
    return 0
  fi
  if ! getent group "$name" >/dev/null; then
    groupadd --system "$name"
  fi
  useradd --system --gid "$name" --home-dir "$home" --no-create-home \
    --shell /usr/sbin/nologin --comment "$comment" "$name"
}
