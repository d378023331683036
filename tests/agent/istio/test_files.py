"""istioctl's VM files: the format it writes parses; each malformed variant is a
ConfigError naming file:line, and the real CLI exits 78 with that message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.istio.envfile import parse_env
from agent.istio.hosts import parse_hosts
from agent.istio.meshfile import parse_mesh
from agent.istio.token import parse_token
from agent.istio.vm import load_vm
from tests.fixtures.certs import TestCA
from tests.fixtures.istio_vm import agent_yaml, quote, unsigned_jwt, write_vm_files

ENV = Path("/x/cluster.env")


@pytest.fixture(scope="module")
def root_pem() -> bytes:
    return TestCA().bundle_pem


def test_shell_quoting_as_istioctl_writes_it() -> None:
    text = ("A='plain'\n# comment\n\nB=''\nC='it'\"'\"'s'\nexport D=bare-word_1.2:3,4\n"
            "E=\"dq \\\"x\\\"\"  # trailing comment\nF='{\"a\":\"b c\"}'\n")
    env = {k: v.value for k, v in parse_env(text, ENV).items()}
    assert env == {"A": "plain", "B": "", "C": "it's", "D": "bare-word_1.2:3,4",
                   "E": 'dq "x"', "F": '{"a":"b c"}'}
    assert parse_env(text, ENV)["F"].line == 8
    assert quote("it's") == "'it'\"'\"'s'"


@pytest.mark.parametrize(("text", "line", "what", "problem"), [
    ("A='ok'\nB='open\n", 2, "B", "unterminated single quote"),
    ("A=\"open\n", 1, "A", "unterminated double quote"),
    ("A='ok'\nB=$HOME\n", 2, "B", "unquoted '$'"),
    ("A=\"$(id)\"\n", 1, "A", "inside double quotes"),
    ("A=*\n", 1, "A", "unquoted '*'"),
    ("A='x' rm -rf\n", 1, "A", "unexpected text after the value"),
    ("just words\n", 1, "just words", "is not a variable assignment"),
    ("1A='x'\n", 1, "1A", "is not a variable assignment"),
    ("A=x\\\n", 1, "A", "ending in a backslash"),
])
def test_malformed_cluster_env_names_file_and_line(text: str, line: int, what: str,
                                                   problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_env(text, ENV)
    assert err.value.file == f"{ENV}:{line}"
    assert err.value.key == what
    assert problem in err.value.problem
    assert err.value.allowed


def test_mesh_yaml_as_istioctl_writes_it() -> None:
    from tests.fixtures.istio_vm import mesh_yaml

    mesh = parse_mesh(mesh_yaml("istiod-rev-1.istio-system.svc:15012"), Path("/x/mesh.yaml"))
    assert (mesh.discovery.host, mesh.discovery.port) == ("istiod-rev-1.istio-system.svc", 15012)
    assert mesh.proxy_metadata["ISTIO_META_DNS_CAPTURE"] == "true"
    assert mesh.proxy_metadata["ISTIO_META_MESH_ID"] == ""
    assert mesh.lines["ISTIO_META_WORKLOAD_NAME"] == 10
    assert mesh.default_config["readinessProbe"] == {"httpGet": {"port": 8080}}
    default = parse_mesh("defaultConfig:\n  proxyMetadata: {}\n", Path("/x/mesh.yaml"))
    assert str(default.discovery) == "istiod.istio-system.svc:15012"


@pytest.mark.parametrize(("text", "line", "what", "problem"), [
    ("defaultConfig:\n  discoveryAddress: [a\n", 3, "yaml", ""),
    ("", 1, "defaultConfig", "empty"),
    ("- a\n", 1, "defaultConfig", "not a mapping"),
    ("other: 1\n", 1, "defaultConfig", "missing"),
    ("defaultConfig: 3\n", 1, "defaultConfig", "not a mapping"),
    ("defaultConfig:\n  discoveryAddress: istiod\n", 2, "defaultConfig.discoveryAddress",
     "not HOST:PORT"),
    ("defaultConfig:\n  discoveryAddress: {a: 1}\n", 2, "defaultConfig.discoveryAddress",
     "not a string"),
    ("defaultConfig:\n  proxyMetadata:\n    A: x\n    B: true\n", 4,
     "defaultConfig.proxyMetadata.B", "not a string"),
    ("defaultConfig:\n  proxyMetadata: [1]\n", 2, "defaultConfig.proxyMetadata",
     "not a mapping"),
])
def test_malformed_mesh_yaml_names_file_and_line(text: str, line: int, what: str,
                                                 problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mesh(text, Path("/x/mesh.yaml"))
    assert err.value.file == f"/x/mesh.yaml:{line}"
    assert err.value.key == what
    assert problem in err.value.problem


def test_hosts_file() -> None:
    hosts = parse_hosts("# c\n10.0.0.5 istiod.istio-system.svc other\n\nfd00::1 Six.svc.\n",
                        Path("/x/hosts"))
    assert hosts == {"istiod.istio-system.svc": "10.0.0.5", "other": "10.0.0.5",
                     "six.svc": "fd00::1"}
    for text, line, problem in (("10.0.0.5 a\nistiod 10.0.0.5\n", 2, "not an IP address"),
                                ("10.0.0.5\n", 1, "no host name")):
        with pytest.raises(ConfigError) as err:
            parse_hosts(text, Path("/x/hosts"))
        assert err.value.file == f"/x/hosts:{line}" and problem in err.value.problem


def test_token_claims_are_read_and_the_token_never_printed() -> None:
    raw = unsigned_jwt({"sub": "system:serviceaccount:ns:sa", "aud": "istio-ca",
                        "exp": 2000000000})
    token = parse_token(raw + "\n", Path("/x/istio-token"))
    assert token.value.reveal() == raw
    assert raw not in repr(token) and raw not in str(token)
    assert token.subject == "system:serviceaccount:ns:sa"
    assert token.audiences == ("istio-ca",)
    for bad in ("not-a-jwt", "a.b.c", raw + "\n" + raw):
        with pytest.raises(ConfigError) as err:
            parse_token(bad, Path("/x/istio-token"))
        assert err.value.file == "/x/istio-token:1"
        assert bad not in str(err.value)


def test_vm_files_assemble(tmp_path: Path, root_pem: bytes) -> None:
    write_vm_files(tmp_path, root_pem=root_pem, env_extra={
        "CA_ADDR": "istiod.istio-system.svc:15012", "ISTIO_SVC_IP": "10.1.2.3",
        "ISTIO_INBOUND_PORTS": "8080,9090", "ISTIO_SERVICE_CIDR": "10.96.0.0/12,fd00::/8"})
    vm = load_vm(tmp_path)
    assert (vm.namespace, vm.service_account, vm.cluster_id) == ("vm-ns", "vm-sa", "Kubernetes")
    assert vm.inbound_ports == (8080, 9090)
    assert vm.service_cidrs == ("10.96.0.0/12", "fd00::/8")
    assert vm.exclude_inbound_ports == (22, 15090, 15021, 15020)
    assert vm.instance_ip == "10.1.2.3"
    assert vm.resolve(vm.ca) == "10.0.0.5"
    assert vm.metadata["LABELS"]["app"] == "web"   # ISTIO_METAJSON_LABELS, parsed
    assert vm.metadata["WORKLOAD_NAME"] == "web"   # ISTIO_META_WORKLOAD_NAME
    assert vm.metadata["DNS_CAPTURE"] == "true"
    star = load_vm(write_vm_files(tmp_path / "b", root_pem=root_pem))
    assert star.inbound_ports is None and star.service_cidrs is None


@pytest.mark.parametrize(("name", "content", "line", "key"), [
    ("cluster.env", "ISTIO_NAMESPACE='ns'\nISTIO_INBOUND_PORTS='80,http'\n", 2,
     "ISTIO_INBOUND_PORTS"),
    ("cluster.env", "ISTIO_NAMESPACE='ns'\nISTIO_SERVICE_CIDR='10.0.0.0/33'\n", 2,
     "ISTIO_SERVICE_CIDR"),
    ("cluster.env", "ISTIO_NAMESPACE='ns'\nCA_ADDR='istiod'\n", 2, "CA_ADDR"),
    ("cluster.env", "ISTIO_NAMESPACE='ns'\nISTIO_METAJSON_LABELS='{x'\n", 2,
     "ISTIO_METAJSON_LABELS"),
    ("cluster.env", "SERVICE_ACCOUNT='sa'\n", 1, "ISTIO_NAMESPACE"),
    ("root-cert.pem", "hello\n", 1, "pem"),
    ("root-cert.pem", "x\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
     2, "pem"),
    ("hosts", "istiod.istio-system.svc 10.0.0.5\n", 1, "address"),
])
def test_each_bad_file_fails_the_config_load(tmp_path: Path, root_pem: bytes, name: str,
                                            content: str, line: int, key: str) -> None:
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=root_pem)
    if name == "cluster.env":
        # Replace mesh.yaml's metadata too, so the variable comes only from cluster.env.
        (istio_dir / "mesh.yaml").write_text("defaultConfig:\n  proxyMetadata: {}\n")
    (istio_dir / name).write_text(content)
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(istio_dir, tmp_path / "state"))
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.file == f"{istio_dir / name}:{line}"
    assert err.value.key == key


def test_istio_mode_excludes_a_registrar(tmp_path: Path, root_pem: bytes) -> None:
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=root_pem)
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(istio_dir, tmp_path / "s") + "registrar:\n  url: https://r\n")
    with pytest.raises(ConfigError, match=r"mesh\.type"):
        load_config(config)
    config.write_text(f"registrar:\n  url: https://r.example\nistio:\n  dir: {istio_dir}\n")
    with pytest.raises(ConfigError, match=r"mesh\.type is static"):
        load_config(config)
    config.write_text(agent_yaml(istio_dir, tmp_path / "s"))
    loaded = load_config(config)
    assert loaded.mesh_type == "istio" and loaded.registrar is None
    assert loaded.istio is not None and loaded.istio.cert_ttl == 86400


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_cli_check_and_run_exit_78_naming_file_and_line(tmp_path: Path, root_pem: bytes) -> None:
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=root_pem)
    env = (istio_dir / "cluster.env").read_text().replace(
        "ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'", "ISTIO_LOCAL_EXCLUDE_PORTS='22,ssh")
    (istio_dir / "cluster.env").write_text(env)
    line = next(i for i, t in enumerate(env.splitlines(), 1) if "EXCLUDE" in t)
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(istio_dir, tmp_path / "state"))
    for command in ("check", "run"):
        result = _cli(command, "--config", str(config))
        assert result.returncode == 78, result.stderr
        assert f"{istio_dir / 'cluster.env'}:{line}: ISTIO_LOCAL_EXCLUDE_PORTS: " \
               "unterminated single quote" in result.stderr


def test_cli_check_lists_each_file(tmp_path: Path, root_pem: bytes) -> None:
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=root_pem, istiod_ip="127.0.0.1",
                               discovery="istiod.istio-system.svc:1")
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(istio_dir, tmp_path / "state"))
    result = _cli("check", "--config", str(config))
    lines = result.stdout.splitlines()
    for name in ("cluster.env", "mesh.yaml", "root-cert.pem", "istio-token", "hosts"):
        assert any(ln.startswith("ok") and f" {name}: " in ln for ln in lines), result.stdout
    ca = next(ln for ln in lines if " istiod CA: " in ln)
    assert ca.startswith("FAIL") and "127.0.0.1:1" in ca   # nothing listens on port 1
    assert result.returncode == 3
    token = (istio_dir / "istio-token").read_text()
    assert token not in result.stdout + result.stderr
