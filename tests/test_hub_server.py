"""Tests of the local test Hub (tests/hub_server.py) against the real huggingface_hub / transformers clients.

conftest.py sets HF_HUB_OFFLINE=1 for the session and may already have imported huggingface_hub, so
nothing here relies on import order: uploads use ``HfApi(endpoint=..., token=...)``, downloads pass
``endpoint=`` where the API takes it, and ``patch_hub_endpoint`` (monkeypatch) points the import-time
constants, the offline flag and the cached HfApi instances at the server for the rest
(transformers' ``from_pretrained``, ``ModelCard.load``, ``RepoCard.validate``).
"""

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hub_server import HubServer, assert_loopback, patch_hub_endpoint

ALICE, BOB = "hf_alice_token", "hf_bob_token"


@pytest.fixture(scope="module")
def hub():
    server = HubServer().start()
    server.add_user("alice", ALICE, orgs=("acme",))
    server.add_user("bob", BOB)
    assert_loopback(server.endpoint)
    assert_loopback(server.cdn_endpoint)
    yield server
    server.stop()


@pytest.fixture
def hub_env(hub, monkeypatch):
    """The module's server as the Hub, online, Xet left as the test sets it; state reset afterwards."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    patch_hub_endpoint(monkeypatch, hub.endpoint)
    hub.requests.clear()
    yield hub
    hub.regular_only = False
    hub._fail.clear()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from toy import tiny_bert as build

    model = build(hidden=16, layers=2, heads=2, ffn=32, vocab_size=50, max_positions=32, num_labels=3).eval()
    folder = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(folder)
    (folder / "README.md").write_text(
        "---\nlicense: mit\ntags:\n- pakd-hf\n- test\nmodel-index:\n- name: tiny\n  results: []\n---\n\n# Tiny BERT\n"
    )
    return model, folder


def _api(hub, token=ALICE):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.endpoint, token=token)


def _paths(hub, method=None):
    return [p for m, p, _ in hub.requests if method in (None, m)]


@pytest.mark.parametrize("mode", ["lfs", "xet-regular"])
def test_round_trip(hub_env, tiny_bert, tmp_path, monkeypatch, mode):
    import torch
    from huggingface_hub import ModelCard, RepoCard, constants, hf_hub_download, snapshot_download
    from transformers import AutoModelForSequenceClassification

    hub = hub_env
    if mode == "lfs":
        patch_hub_endpoint(monkeypatch, hub.endpoint, disable_xet=True)
    else:
        patch_hub_endpoint(monkeypatch, hub.endpoint, disable_xet=False)
        hub.regular_only = True
    from huggingface_hub.utils._runtime import is_xet_available

    assert is_xet_available() == (mode != "lfs")
    model, folder = tiny_bert
    repo_id = f"alice/tiny-{mode}"
    api = _api(hub)

    url = api.create_repo(repo_id)
    assert url == f"{hub.endpoint}/{repo_id}"
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="upload tiny bert")
    head = hub.commits(repo_id)[-1]
    assert info.oid == head.oid and head.title == "upload tiny bert"

    # Stored content == uploaded content, exactly.
    local = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert hub.files(repo_id) == local
    posts = _paths(hub, "POST")
    assert "/api/validate-yaml" in posts
    if mode == "lfs":
        assert hub.lfs_paths(repo_id) == {"model.safetensors"}
        assert f"/{repo_id}.git/info/lfs/objects/batch" in posts
        assert f"/{repo_id}.git/info/lfs/objects/verify" in posts
        assert any(p.startswith("/lfs/") for p in _paths(hub, "PUT"))
    else:
        assert hub.lfs_paths(repo_id) == set()
        assert not any("/xet-" in p or ".git/info/lfs" in p for p in _paths(hub))

    # transformers, through the endpoint constants only.
    hub.requests.clear()
    reloaded = AutoModelForSequenceClassification.from_pretrained(repo_id, cache_dir=tmp_path / "tf").eval()
    ids = torch.tensor([[1, 5, 7, 9, 2], [1, 3, 3, 4, 2]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    # transformers resolves main -> sha (GET /api/models/...), then HEAD/GET .../resolve/<sha>/<file>.
    heads = [s for m, p, s in hub.requests if m == "HEAD" and p == f"/{repo_id}/resolve/{head.oid}/model.safetensors"]
    assert heads == [302 if mode == "lfs" else 200]  # LFS: 302 to the other origin, metadata read off the 302

    # Every file, byte for byte, by hf_hub_download and snapshot_download.
    for name, data in local.items():
        path = hf_hub_download(repo_id, name, endpoint=hub.endpoint, cache_dir=tmp_path / "dl")
        assert open(path, "rb").read() == data
    snap = snapshot_download(repo_id, endpoint=hub.endpoint, cache_dir=tmp_path / "snap")
    assert {p.name: p.read_bytes() for p in Path(snap).iterdir()} == local
    by_sha = hf_hub_download(repo_id, "config.json", revision=head.oid, endpoint=hub.endpoint,
                             cache_dir=tmp_path / "sha")
    assert open(by_sha, "rb").read() == local["config.json"]

    # Repo info, tree, model card.
    minfo = api.model_info(repo_id)
    assert minfo.sha == head.oid and {s.rfilename for s in minfo.siblings} == set(local)
    assert minfo.card_data.license == "mit" and minfo.private is False
    tree = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True)}
    assert set(tree) == set(local)
    assert (tree["model.safetensors"].lfs is not None) == (mode == "lfs")
    card = ModelCard.load(repo_id)
    assert card.data.license == "mit" and card.data.tags == ["pakd-hf", "test"]
    assert constants.ENDPOINT == hub.endpoint
    card.validate()  # posts to constants.ENDPOINT/api/validate-yaml
    bad = RepoCard("---\nmodel-index:\n  name: not-a-list\n---\n# bad\n")  # ModelCard would refuse it locally
    with pytest.raises(ValueError, match="model-index"):
        bad.validate(repo_type="model")

    # A second upload of unchanged files makes no commit (client compares the preupload oids).
    n = len(hub.commits(repo_id))
    api.upload_folder(folder_path=folder, repo_id=repo_id)
    assert len(hub.commits(repo_id)) == n


def test_auth_and_failures(hub_env, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    hub = hub_env
    patch_hub_endpoint(monkeypatch, hub.endpoint, disable_xet=True)
    alice = _api(hub)
    alice.create_repo("alice/auth")
    alice.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id="alice/auth")

    # No token: 401 -> HfHubHTTPError (not RepositoryNotFoundError: the message isn't "repo not found").
    anon = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as exc:
        anon.create_repo("alice/nope")
    assert exc.value.response.status_code == 401 and type(exc.value) is HfHubHTTPError
    with pytest.raises(HfHubHTTPError) as exc:
        anon.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id="alice/auth")
    assert exc.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as exc:  # unknown token
        HfApi(endpoint=hub.endpoint, token="hf_unknown").whoami()
    assert exc.value.response.status_code == 401

    # Wrong namespace: 403.
    with pytest.raises(HfHubHTTPError) as exc:
        alice.create_repo("bob/mine")
    assert exc.value.response.status_code == 403
    assert "bob/mine" not in hub.repos
    with pytest.raises(HfHubHTTPError) as exc:
        _api(hub, BOB).upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id="alice/auth")
    assert exc.value.response.status_code == 403
    alice.create_repo("acme/shared")  # org member may write there
    assert alice.whoami()["orgs"][0]["name"] == "acme"
    assert alice.whoami()["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError) as exc:
        alice.create_repo("alice/auth")
    assert exc.value.response.status_code == 409
    assert alice.create_repo("alice/auth", exist_ok=True) == f"{hub.endpoint}/alice/auth"

    # Injected 500 on the commit: error, and no new commit.
    before = hub.commits("alice/auth")
    hub.fail_next("500-commit")
    with pytest.raises(HfHubHTTPError) as exc:
        alice.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id="alice/auth")
    assert exc.value.response.status_code == 500
    assert hub.commits("alice/auth") == before and hub.files("alice/auth") == {"a.txt": b"v1"}

    # Injected 401 / 403, once and as a context manager.
    hub.fail_next("401")
    with pytest.raises(HfHubHTTPError) as exc:
        alice.whoami()
    assert exc.value.response.status_code == 401
    assert alice.whoami()["name"] == "alice"
    with hub.failing("403"):
        for _ in range(2):
            with pytest.raises(HfHubHTTPError) as exc:
                alice.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id="alice/auth")
            assert exc.value.response.status_code == 403
    alice.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id="alice/auth")
    assert hub.files("alice/auth") == {"a.txt": b"v2"}

    # An lfsFile whose object was never uploaded is rejected (422), nothing committed.
    n = len(hub.commits("alice/auth"))
    body = '{"key":"header","value":{"summary":"x"}}\n' \
           '{"key":"lfsFile","value":{"path":"w.bin","algo":"sha256","oid":"' + "0" * 64 + '","size":3}}\n'
    request = urllib.request.Request(
        f"{hub.endpoint}/api/models/alice/auth/commit/main", data=body.encode(), method="POST",
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/x-ndjson"})
    with pytest.raises(urllib.error.HTTPError) as http_exc:
        urllib.request.urlopen(request, timeout=10)
    assert http_exc.value.code == 422 and len(hub.commits("alice/auth")) == n

    # Private repo: owner reads, anonymous and other users don't.
    alice.create_repo("alice/secret", private=True)
    alice.upload_file(path_or_fileobj=b"s3cret", path_in_repo="s.txt", repo_id="alice/secret")
    assert hub.repo("alice/secret").private
    with pytest.raises(RepositoryNotFoundError) as exc:
        hf_hub_download("alice/secret", "s.txt", endpoint=hub.endpoint, token=False, cache_dir=tmp_path / "anon")
    assert exc.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError) as exc:
        _api(hub, BOB).model_info("alice/secret")
    assert exc.value.response.status_code == 404
    path = hf_hub_download("alice/secret", "s.txt", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path / "own")
    assert open(path, "rb").read() == b"s3cret"
    assert _api(hub).model_info("alice/secret").private is True


def test_private_lfs_download_goes_through_signed_cdn_url(hub_env, tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download

    hub = hub_env
    patch_hub_endpoint(monkeypatch, hub.endpoint, disable_xet=True)
    alice = _api(hub)
    alice.create_repo("alice/private-lfs", private=True)
    blob = bytes(range(256)) * 8
    alice.upload_file(path_or_fileobj=blob, path_in_repo="w.bin", repo_id="alice/private-lfs")
    assert hub.lfs_paths("alice/private-lfs") == {"w.bin"}
    hub.requests.clear()
    path = hf_hub_download("alice/private-lfs", "w.bin", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path)
    assert open(path, "rb").read() == blob
    assert [s for m, p, s in hub.requests if m == "HEAD"] == [302]
    assert any(m == "GET" and p.startswith("/lfs/") for m, p, _ in hub.requests)


def test_xet_on_with_lfs_answer_fails_fast_without_cas(hub_env, tmp_path, monkeypatch):
    """Xet on + server says "lfs": hf_xet asks the token route, gets 501, never learns a CAS url."""
    hub = hub_env
    patch_hub_endpoint(monkeypatch, hub.endpoint, disable_xet=False)
    alice = _api(hub)
    alice.create_repo("alice/lfs-answer")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    start = time.monotonic()
    with pytest.raises(Exception, match="xet-write-token"):
        alice.upload_folder(folder_path=folder, repo_id="alice/lfs-answer")
    assert time.monotonic() - start < 10
    assert hub.files("alice/lfs-answer") == {}
    xet = [(m, p, s) for m, p, s in hub.requests if "/xet-" in p]
    assert xet == [("GET", "/api/models/alice/lfs-answer/xet-write-token/main", 501)]
    assert not any(p.startswith("/lfs/") or "/commit/" in p for _, p, _ in hub.requests)


def test_assert_loopback():
    for ok in ("http://127.0.0.1:8080", "http://localhost:1/x", "http://[::1]:5000", "http://127.1.2.3"):
        assert_loopback(ok)
    for bad in ("https://huggingface.co", "http://10.0.0.1:80", "http://example.com", "http://0.0.0.0:1"):
        with pytest.raises(RuntimeError):
            assert_loopback(bad)
