"""Config: one frozen object; every error names the file, the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from meshcore.config.reader import parse_duration

BASE = "registrar:\n  url: https://registrar.example:8443\n"


def write(tmp_path: Path, main: str, dropins: dict[str, str] | None = None) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(main)
    if dropins:
        (tmp_path / "agent.d").mkdir()
        for name, text in dropins.items():
            (tmp_path / "agent.d" / name).write_text(text)
    return path


def test_defaults_follow_the_documented_layout(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.registrar.url == "https://registrar.example:8443"
    assert config.registrar.ca_file == Path("/etc/mesh-agent/registrar-ca.pem")
    assert config.attestation.token_file == Path("/etc/mesh-agent/bootstrap-token")
    assert config.state_dir == Path("/var/lib/mesh-agent")
    assert config.rotation.renew_at == 0.5 and config.rotation.jitter == 0.1
    assert config.rotation.max_backoff == 120.0
    assert (config.status.host, config.status.port) == ("127.0.0.1", 15020)
    with pytest.raises(AttributeError):
        config.log_level = "debug"  # type: ignore[misc]


def test_dropins_merge_in_name_order(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "log_level: info\n", {
        "20-late.yaml": "log_level: error\n",
        "10-cloud-init.yaml": "log_level: debug\nrotation:\n  renew_at: 0.6\n",
    })
    config = load_config(path)
    assert config.log_level == "error"
    assert config.rotation.renew_at == 0.6
    assert config.registrar.url == "https://registrar.example:8443"


def test_main_file_may_be_absent_when_dropins_configure_everything(tmp_path: Path) -> None:
    (tmp_path / "agent.d").mkdir()
    (tmp_path / "agent.d" / "10-cloud-init.yaml").write_text(BASE)
    config = load_config(tmp_path / "agent.yaml")
    assert config.registrar.url.startswith("https://")


@pytest.mark.parametrize(("main", "dropin", "file", "key", "allowed"), [
    ("rotation:\n  renew_at: 2\n", None, "agent.yaml", "rotation.renew_at", "0.1..0.9"),
    ("", "registrar:\n  url: http://plain:80\n", "10-x.yaml", "registrar.url", "https URL"),
    ("attestation:\n  method: magic\n", None, "agent.yaml", "attestation.method",
     "auto|token|gce|aws|azure"),
    ("identity:\n  key_type: rsa-1024\n", None, "agent.yaml", "identity.key_type", "rsa-2048"),
    ("rotation:\n  max_backoff: forever\n", None, "agent.yaml", "rotation.max_backoff",
     "a duration"),
    ("status:\n  listen: localhost\n", None, "agent.yaml", "status.listen", "127.0.0.1:15020"),
    ("registrar:\n  timeout: 1s\n  urll: x\n", None, "agent.yaml", "registrar.urll", "ca_file"),
    ("state_dir: relative/path\n", None, "agent.yaml", "state_dir", "absolute path"),
    ('mesh:\n  type: istio\nistio:\n  dir: "/etc\\0/istio"\n', None, "agent.yaml",
     "istio.dir", "without NUL"),
    ("colour: blue\n", None, "agent.yaml", "colour", "registrar"),
])
def test_errors_name_file_key_and_allowed(tmp_path: Path, main: str, dropin: str | None,
                                          file: str, key: str, allowed: str) -> None:
    base = BASE if "registrar:" not in main else main.replace(
        "registrar:\n", "registrar:\n  url: https://r.example\n")
    text = base if "registrar:" in main else BASE + main
    path = write(tmp_path, text, {"10-x.yaml": dropin} if dropin else None)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert Path(err.file).name == file
    assert err.key == key
    assert allowed in str(err)


def test_missing_registrar_url_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "log_level: info\n"))
    assert info.value.key == "registrar.url"


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE, {"10-bad.yaml": "a: [unclosed\n"})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file.endswith("10-bad.yaml")
    assert "line" in info.value.key


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("24h", 86400), ("250ms", 0.25), ("2d", 172800), ("7", 7)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_config_exits_78_and_says_why(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "rotation:\n  jitter: 5\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    assert "rotation.jitter" in proc.stderr and str(path) in proc.stderr


@pytest.mark.parametrize(("extra", "key", "allowed"), [
    # Capture with nothing to serve its ports would strand every outbound connection.
    ("capture: {enabled: true}\n", "capture.enabled", "capture.external_proxy: true"),
    ("sidecar: {enabled: false}\ncapture: {enabled: true, external_proxy: false}\n",
     "capture.enabled", "sidecar.enabled: true"),
    ("sidecar: {enabled: true}\ncapture: {enabled: true, external_proxy: true}\n",
     "capture.external_proxy", "sidecar.enabled: false"),
    ("sidecar: {enabled: true, ipv6: false}\ncapture: {enabled: true}\n", "capture.ipv6",
     "sidecar.ipv6: true"),
    ("sidecar: {enabled: true, proxy_user: envoy}\ncapture: {enabled: true, "
     "proxy_user: istio-proxy}\n", "capture.proxy_user", "only proxy.user"),
])
def test_capture_needs_a_proxy_that_agrees(tmp_path: Path, extra: str, key: str,
                                           allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE + extra))
    assert (info.value.file, info.value.key) == (str(tmp_path / "agent.yaml"), key)
    assert allowed in info.value.allowed, info.value


def test_capture_with_an_external_proxy(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "proxy: {uid: 1337, gid: 1337}\n"
                               "capture: {enabled: true, external_proxy: true}\n"))
    assert config.capture.enabled and config.capture.external_proxy
    assert not config.sidecar.enabled
    assert (config.capture.proxy.uid, config.capture.proxy.gid) == (1337, 1337)


def test_one_proxy_for_sidecar_and_capture(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "proxy: {user: envoy, outbound_port: 16001}\n"
                               "sidecar: {enabled: true}\ncapture: {enabled: true}\n"))
    assert config.proxy.user == "envoy" and config.proxy.outbound_port == 16001
    assert config.sidecar.proxy is config.proxy and config.capture.proxy is config.proxy
    assert config.warnings == ()


OLD_SHAPE = ("sidecar: {enabled: true, proxy_uid: 1337, proxy_gid: 1337, inbound_port: 16006}\n"
             "capture: {enabled: true, proxy_uid: 1337, proxy_gid: 1337}\n")


def test_old_proxy_keys_still_work_with_warnings(tmp_path: Path) -> None:
    """A config written before proxy: existed: the sidecar's and capture's copies."""
    path = write(tmp_path, BASE, {"10-cloud-init.yaml": OLD_SHAPE})
    config = load_config(path)
    assert (config.proxy.uid, config.proxy.gid, config.proxy.inbound_port) == (1337, 1337, 16006)
    assert config.capture.proxy == config.sidecar.proxy == config.proxy
    dropin = str(tmp_path / "agent.d" / "10-cloud-init.yaml")
    assert sorted((w.file, w.key, w.instead) for w in config.warnings) == [
        (dropin, "capture.proxy_gid", "proxy.gid instead"),
        (dropin, "capture.proxy_uid", "proxy.uid instead"),
        (dropin, "sidecar.inbound_port", "proxy.inbound_port instead"),
        (dropin, "sidecar.proxy_gid", "proxy.gid instead"),
        (dropin, "sidecar.proxy_uid", "proxy.uid instead"),
    ]


def test_check_shows_the_deprecation_with_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "state_dir: " + str(tmp_path / "state") + "\n", {
        "10-cloud-init.yaml": OLD_SHAPE})
    proc = subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    dropin = tmp_path / "agent.d" / "10-cloud-init.yaml"
    assert f"warn  config: {dropin}: capture.proxy_uid: is deprecated (use: proxy.uid " \
           "instead)" in proc.stdout, proc.stdout + proc.stderr


def test_capture_ipv4_only_with_a_dual_stack_sidecar_is_fine(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "sidecar: {enabled: true}\n"
                               "capture: {enabled: true, ipv6: false}\n"))
    assert config.sidecar.ipv6 and not config.capture.ipv6
