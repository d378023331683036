"""cloud-init user data for the VM tests: the same shape docs/cloud-init.md
documents for "join token + registrar address", plus test-only extras."""

from __future__ import annotations

import yaml

GUEST_REGISTRAR = "10.0.2.100"  # qemu guestfwd -> the host registrar's loopback port
GUEST_REGISTRAR_PORT = 8443


def join_token_user_data(*, ca_pem: str, token: str, agent_yaml: str,
                         extra_files: list[dict[str, str]] | None = None,
                         pre_commands: list[list[str]] | None = None) -> str:
    """User data that drops the trust anchor, the token and an agent.d drop-in,
    then enables and starts the agent (blocking until READY=1)."""
    files = [
        {"path": "/etc/mesh-agent/registrar-ca.pem", "permissions": "0644", "content": ca_pem},
        # root-owned 0600 is fine: the unit hands it to mesh-agent before start.
        {"path": "/etc/mesh-agent/bootstrap-token", "permissions": "0600", "content": token},
        {"path": "/etc/mesh-agent/agent.d/10-cloud-init.yaml", "permissions": "0644",
         "content": agent_yaml},
        *(extra_files or []),
    ]
    data = {
        "write_files": files,
        "runcmd": [*(pre_commands or []), ["systemctl", "enable", "--now", "mesh-agent.service"]],
    }
    return "#cloud-config\n" + yaml.safe_dump(data, sort_keys=False)


def agent_drop_in(*, url: str, renew_at: float | None = None,
                  capture: bool = True, sidecar: bool = True) -> str:
    # Capture needs a proxy (capture.enabled alone is a config error): our sidecar.
    data: dict[str, object] = {"registrar": {"url": url}, "attestation": {"method": "token"}}
    if renew_at is not None:
        data["rotation"] = {"renew_at": renew_at}
    if sidecar:
        # Envoy starts slowly under TCG emulation; the default 30 s is for real CPUs.
        data["sidecar"] = {"enabled": True, "envoy_path": "/usr/local/bin/envoy",
                           "ready_timeout": "150s"}
    if capture:
        # The registrar is reached through qemu's 10.0.2.0/24: keep the
        # control path out of capture (no mesh service stands for it here).
        data["capture"] = {"enabled": True, "exclude_outbound_cidrs": ["10.0.2.0/24"]}
    return yaml.safe_dump(data, sort_keys=False)
