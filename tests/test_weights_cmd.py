"""`psa-eader weights` (download against a local HTTP server, never the internet) and the rule that a
training stage needing initial weights refuses a null weights key (random init only when asked for)."""
import functools
import hashlib
import http.server
import socket
import threading

import pytest
import torch

from conftest import tiny_cfg
from psa_baseline.errors import InputError
from stages import builders, train_aff, train_cam, train_standalone, weights_cmd
from stages.cli import main as cli_main
from stages.config import load_config

PAYLOAD = b"not really a network, but 64 bytes of something to hash......."


@pytest.fixture
def server(tmp_path):
    """http://127.0.0.1:PORT serving tmp_path/www (PAYLOAD as w.bin); stopped after the test."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "w.bin").write_bytes(PAYLOAD)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _publish(monkeypatch, url, **digest):
    """Make `test` a known name pointing at `url`, with the given digests."""
    entry = weights_cmd.Published("w.bin", url, "net.weights", "a test file", **digest)
    monkeypatch.setattr(weights_cmd, "KNOWN", {"test": entry})
    return entry


def _download(cache, *extra):
    return cli_main(["weights", "download", "test", "--cache-dir", str(cache), *extra])


def test_download_verifies_and_renames(server, tmp_path, monkeypatch, capsys):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    _publish(monkeypatch, f"{server}/w.bin", sha256=sha, sha256_prefix=sha[:8],
             md5=hashlib.md5(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    cache = tmp_path / "cache"
    assert _download(cache) == 0
    assert (cache / "w.bin").read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["w.bin"]  # no temp file left behind
    out = capsys.readouterr().out
    assert f"sha256 {sha}" in out and f"set net.weights={cache / 'w.bin'}" in out
    # a second call checks the file in place instead of fetching it again
    assert _download(cache) == 0
    assert "already there" in capsys.readouterr().out


def test_download_with_a_wrong_digest_deletes_the_file_and_exits_2(server, tmp_path, monkeypatch, capsys):
    _publish(monkeypatch, f"{server}/w.bin", sha256_prefix="deadbeef")
    cache = tmp_path / "cache"
    assert _download(cache) == 2
    err = capsys.readouterr().err
    assert "does not start with the published deadbeef" in err and "deleted" in err
    assert list(cache.iterdir()) == []


def test_a_wrong_md5_or_size_is_also_refused(server, tmp_path, monkeypatch, capsys):
    _publish(monkeypatch, f"{server}/w.bin", md5="0" * 32, size=len(PAYLOAD) + 1)
    assert _download(tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "MD5" in err and f"size {len(PAYLOAD)} bytes, published {len(PAYLOAD) + 1}" in err


def test_a_hand_copied_file_that_does_not_match_is_kept_and_refused(tmp_path, monkeypatch, capsys):
    _publish(monkeypatch, "http://127.0.0.1:9/never-fetched", sha256_prefix="deadbeef")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "w.bin").write_bytes(b"something else")
    assert _download(cache) == 2
    assert "delete" in capsys.readouterr().err and (cache / "w.bin").exists()


def test_server_404_exits_2_and_says_how_to_get_the_file(server, tmp_path, monkeypatch, capsys):
    _publish(monkeypatch, f"{server}/missing.bin", sha256_prefix="00000000")
    cache = tmp_path / "cache"
    assert _download(cache) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and f"copy it to {cache / 'w.bin'}" in err
    assert list(cache.iterdir()) == []


def test_offline_says_to_copy_the_file_by_hand(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as on a machine offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _publish(monkeypatch, f"http://127.0.0.1:{port}/w.bin", sha256_prefix="00000000")
    cache = tmp_path / "cache"
    assert _download(cache) == 2
    err = capsys.readouterr().err
    assert "offline" in err and f"copy it to {cache / 'w.bin'}" in err and "rerunning" in err


def test_mirror_url_and_unknown_names(server, tmp_path, monkeypatch, capsys):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    _publish(monkeypatch, f"{server}/gone.bin", sha256_prefix=sha[:8])
    assert _download(tmp_path / "c", "--url", f"{server}/w.bin") == 0
    assert cli_main(["weights", "download", "nosuch", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "unknown weights name 'nosuch'" in capsys.readouterr().err


def test_list_names_every_file_and_its_config_key(tmp_path, capsys):
    assert cli_main(["weights", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name, e in weights_cmd.KNOWN.items():
        assert f"{name}: {e.filename}" in out and f"{e.key}={tmp_path / e.filename}" in out and e.url in out
    assert weights_cmd.KNOWN["resnet18"].url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert weights_cmd.KNOWN["wideresnet38"].md5 == "ff21f45d6bf03284100dcbec571edfad"


def test_convert_and_info_wrap_the_weights_tool(tmp_path, capsys):
    from conftest import SHARED
    params = SHARED / "mxnet-params" / "insightface_mtcnn_det1-0001.params"
    if not params.is_file():
        pytest.skip("../shared/data not available")
    assert cli_main(["weights", "info", str(params)]) == 0
    assert "conv1_weight" in capsys.readouterr().out
    # not an ademxapp file: convert refuses it with exit 2
    assert cli_main(["weights", "convert", str(params), str(tmp_path / "o.pth")]) == 2
    assert not (tmp_path / "o.pth").exists()
    assert cli_main(["weights", "frobnicate"]) == 2


# ---------------------------------------------------------------------------- no silent random init

def test_the_paper_config_refuses_to_train_from_random_weights_by_accident():
    cfg = load_config("voc")
    with pytest.raises(InputError, match=r"'net.weights' is null.*psa-eader weights download wideresnet38"):
        builders.require_weights(cfg, "train-cam")
    eader = load_config("voc", ["eader.enabled=true", "net.weights=/x.params"])
    with pytest.raises(InputError, match=r"'eader.adv_weights' is null.*weights download resnet18.*=random"):
        builders.require_weights(eader, "train-cam")
    with pytest.raises(InputError, match=r"'standalone.weights' is null.*weights download resnet101"):
        builders.require_weights(cfg, "standalone")
    with pytest.raises(InputError, match="'net.weights' is null"):
        builders.require_weights(cfg, "train-aff")  # aff_train.init: imagenet


def test_which_stage_needs_which_weights():
    cfg = load_config("voc")
    assert builders.needed_weights(cfg, "train-cam") == ["net.weights"]
    assert builders.needed_weights(cfg, "train-aff") == ["net.weights"]
    assert builders.needed_weights(load_config("voc", ["aff_train.init=cam"]), "train-aff") == []
    on = load_config("voc", ["eader.enabled=true"])
    assert builders.needed_weights(on, "train-cam") == ["net.weights", "eader.adv_weights"]
    assert builders.needed_weights(on, "standalone") == ["standalone.weights", "eader.adv_weights"]
    # the adversary pre-trained by train-adv replaces the ImageNet file
    pre = load_config("voc", ["eader.enabled=true", "adv_pretrain.epochs=1"])
    assert builders.needed_weights(pre, "train-cam") == ["net.weights"]
    assert builders.needed_weights(cfg, "make-cam") == []


def test_training_stages_stop_before_doing_anything(demo_root, tmp_path):
    cases = [(train_cam.run, {"net.weights": None}, "net.weights"),
             (train_cam.run, {"eader.enabled": True, "eader.adv_weights": None}, "eader.adv_weights"),
             (train_aff.run, {"aff_train.init": "imagenet", "net.weights": None}, "net.weights"),
             (train_standalone.run_train, {"standalone.weights": None}, "standalone.weights")]
    for run, over, key in cases:
        cfg = tiny_cfg(demo_root, tmp_path / "w", **over)
        with pytest.raises(InputError, match=f"'{key}' is null"):
            run(cfg)
    assert not (tmp_path / "w").exists()  # refused before any folder, log or checkpoint


def test_random_is_explicit_random_init_and_a_path_is_loaded(demo_root, tmp_path):
    cfg = tiny_cfg(demo_root, tmp_path / "w")
    assert cfg["net"]["weights"] == "random" and builders.weights_file(cfg, "net.weights") is None
    builders.require_weights(cfg, "train-cam")  # random: allowed
    net = builders.build_cam_net(cfg)
    path = tmp_path / "net.pth"
    torch.save({k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()
                if v.is_floating_point()}, path)
    loaded = builders.build_cam_net(tiny_cfg(demo_root, tmp_path / "w", **{"net.weights": str(path)}))
    assert torch.equal(loaded.state_dict()["fc8.weight"], torch.full_like(net.state_dict()["fc8.weight"], 0.5))
    adv = train_cam.build_eader(tiny_cfg(demo_root, tmp_path / "w", **{"eader.enabled": True}), "cpu")
    assert adv.adversary.weights_report is None  # eader.adv_weights=random: no file read

