"""Architecture rules, checked on the real source and in clean interpreters:
no import cycles, the two programs never import each other, components do
not reach up into the config composer, and each entry point loads only its
own program."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.architecture.imports import ROOT, cycles, project_graph

# Components own their config schema; only composers (the config model, the
# daemon, the CLIs, status/preflight reports) may load the composed config.
COMPONENTS = ("agent.attest", "agent.capture", "agent.sidecar", "agent.proxy",
              "agent.credentials", "agent.identity", "agent.registrar_client", "agent.rotation",
              "agent.state")
COMPOSER_MODULES = ("agent.capture.cli",)


def test_no_import_cycles() -> None:
    assert cycles(project_graph()) == []


def test_cycle_finder_sees_a_planted_cycle() -> None:
    graph = project_graph()
    graph["meshcore.secret"] = graph["meshcore.secret"] | {"meshcore.durable"}
    graph["meshcore.durable"] = graph["meshcore.durable"] | {"meshcore.secret"}
    assert ["meshcore.durable", "meshcore.secret"] in cycles(graph)


def test_programs_do_not_import_each_other() -> None:
    bad = []
    for module, edges in project_graph().items():
        program = module.split(".")[0]
        for target in edges:
            other = target.split(".")[0]
            if program == "meshcore" and other != "meshcore":
                bad.append((module, target))
            if {program, other} == {"agent", "registrar"}:
                bad.append((module, target))
    assert bad == []


def test_components_do_not_import_the_config_composer() -> None:
    bad = sorted(
        (module, target)
        for module, edges in project_graph().items()
        if module.startswith(COMPONENTS) and module not in COMPOSER_MODULES
        for target in edges
        if target == "agent.config" or target.startswith(("agent.config.", "agent.daemon"))
    )
    assert bad == []


def _loaded(code: str) -> dict[str, list[str]]:
    probe = (
        f"{code}\nimport json, sys\n"
        "mods = sorted(sys.modules)\n"
        "print(json.dumps({p: [m for m in mods if m == p or m.startswith(p + '.')]"
        " for p in ('agent', 'registrar', 'meshcore', 'aiohttp', 'grpc', 'psycopg')}))"
    )
    loaded: dict[str, list[str]] = _printed(probe)
    return loaded


def _printed(probe: str) -> Any:
    """What ``probe`` prints last (JSON), run in a clean interpreter (``-I``) that
    imports from this checkout."""
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                          f"{str(ROOT)!r})\n{probe}"],
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_registrar_entry_points_load_no_agent_module() -> None:
    loaded = _loaded("import registrar.cli, registrar.server, registrar.api.app")
    assert loaded["registrar"] and loaded["meshcore"]
    assert loaded["agent"] == []


def test_agent_entry_points_load_no_registrar_module() -> None:
    loaded = _loaded("import agent.cli, agent.daemon.app, agent.capture.cli")
    assert loaded["agent"] and loaded["meshcore"]
    assert loaded["registrar"] == []
    assert loaded["aiohttp"] == []  # the agent's package does not ship aiohttp


def test_agent_entry_point_starts_envoy_before_cryptography_loads() -> None:
    """``mesh-agent run`` reads its config and builds the data plane (which starts
    Envoy early on a restart) before the daemon's modules are imported: neither
    may load cryptography or the credential modules, or Envoy's start would wait
    for them again. An Istio config section loads its root certificates' parser
    only when there is one. The one identity module allowed is the key helper's
    launcher (standard library only), which a first boot starts first."""
    probe = ("import agent.cli, agent.daemon.start, agent.sidecar.service, "
             "agent.sidecar.settings, agent.sidecar.supervisor\nimport json, sys\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == "
             "'cryptography' or m.startswith(('agent.credentials', 'agent.identity', "
             "'agent.istio.vm', 'agent.daemon.app')))))")
    assert _printed(probe) == ["agent.identity", "agent.identity.keygen"]


def test_agent_start_up_loads_neither_psutil_nor_prometheus_nor_the_sidecar() -> None:
    """Memory the agent does not need before READY: psutil serves one call at an
    attestation, prometheus-client the first /metrics scrape, tenacity the first
    attestation or renewal, httpx and the cloud attestors only a cloud attestation
    (the registrar client speaks HTTP itself), grpc and protobuf only Istio mode,
    and the sidecar's modules (beyond its config section) only an agent with the
    sidecar on."""
    probe = ("import agent.cli, agent.daemon.app, agent.status.server\nimport json, sys\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('psutil', 'prometheus_client', 'tenacity', 'httpx', 'grpc', 'google') or "
             "m in ('agent.attest.aws', 'agent.attest.azure', 'agent.attest.gce', "
             "'agent.attest.metadata', 'agent.istio.ca_client') or "
             "(m.startswith('agent.sidecar.') and m != 'agent.sidecar.config'))))")
    assert _printed(probe) == []


def test_the_daemon_loads_no_cryptography() -> None:
    """cryptography keeps about 10 MiB resident: the daemon reads its certificates
    with its own DER reader and the standard library's ssl, and makes keys and
    CSRs in a helper process (tests/integration/test_rotation.py checks the
    running daemon's memory map after six renewals)."""
    probe = ("import agent.cli, agent.daemon.app, agent.identity.manager, "
             "agent.identity.attest_key, agent.credentials.store, agent.status.server\n"
             "import json, sys\n"
             "print(json.dumps(sorted(m for m in sys.modules "
             "if m.split('.')[0] == 'cryptography')))")
    assert _printed(probe) == []

