"""The istioctl-format generator reproduces istioctl's quirks, so tests that feed
its files to an agent feed what an operator really has."""

from __future__ import annotations

from pathlib import Path

from tests.istio.pilot_agent import shell_env
from tests.istio.vmfiles import VmFiles, shell_quote, yaml_text


def _files(**overrides: object) -> VmFiles:
    base: dict[str, object] = {
        "group": "web", "namespace": "shop", "service_account": "web-sa",
        "istiod_ip": "10.0.0.5", "root_cert": b"PEM", "token": "a.b.c",
        "labels": {"app": "web", "version": "v2"}, "internal_ip": "10.0.0.9"}
    base.update(overrides)
    return VmFiles(**base)  # type: ignore[arg-type]


def test_shell_quoting_is_istioctls() -> None:
    assert shell_quote("") == "''"
    assert shell_quote("latest") == "'latest'"  # letters other than w count as unsafe
    assert shell_quote("w/w.w") == "w/w.w"
    assert shell_quote("it's") == "'it'\"'\"'s'"


def test_cluster_env_is_sorted_quoted_and_sources_back(tmp_path: Path) -> None:
    text = _files().cluster_env()
    lines = text.splitlines()
    assert lines == sorted(lines)
    assert "ISTIO_INBOUND_PORTS='*'" in lines
    assert "ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'" in lines
    assert "ISTIO_SERVICE='web.shop'" in lines and "ISTIO_SVC_IP='10.0.0.9'" in lines
    assert "CANONICAL_REVISION='v2'" in lines and "ISTIO_META_DNS_CAPTURE='true'" in lines
    assert not any(line.startswith("CA_ADDR=") for line in lines)  # default revision
    path = tmp_path / "cluster.env"
    path.write_text(text)
    env = shell_env(path)
    assert env["ISTIO_METAJSON_LABELS"] == (
        '{"app":"web","service.istio.io/canonical-name":"web",'
        '"service.istio.io/canonical-revision":"v2","version":"v2"}')
    assert env["SERVICE_ACCOUNT"] == "web-sa" and env["ISTIO_META_MESH_ID"] == ""


def test_revisioned_istiod_gets_ca_addr_and_its_host() -> None:
    files = _files(revision="canary")
    assert "CA_ADDR='istiod-canary.istio-system.svc:15012'" in files.cluster_env().splitlines()
    assert files.hosts() == "10.0.0.5 istiod-canary.istio-system.svc\n"
    assert "discoveryAddress: istiod-canary.istio-system.svc:15012" in files.mesh_yaml()


def test_mesh_yaml_key_order_and_quoting_follow_gos_yaml() -> None:
    text = yaml_text({"m": {"ISTIO_METAJSON_LABELS": '{"a":"b"}', "ISTIO_META_X": "true",
                            "ISTIO_META_Y": "", "PORT": 8080}})
    assert text == ("m:\n  ISTIO_META_X: \"true\"\n  ISTIO_META_Y: \"\"\n"
                    "  ISTIO_METAJSON_LABELS: '{\"a\":\"b\"}'\n  PORT: 8080\n")
