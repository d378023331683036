#!/bin/sh
# deb preinst (install|upgrade) and rpm %pre (1|2): users exist before unpack.
set -e
@USERS@
mesh_ensure_user mesh-registrar /var/lib/mesh-registrar "mesh-registrar daemon"
