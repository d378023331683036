#!/bin/sh
# deb preinst (install|upgrade) and rpm %pre (1|2): users exist before unpack.
set -e
@USERS@
mesh_ensure_user mesh-agent /var/lib/mesh-agent "mesh-agent daemon"
mesh_ensure_user mesh-proxy /nonexistent "mesh sidecar proxy (Envoy)"
