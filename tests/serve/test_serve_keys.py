"""`loom serve --api-key` (issue 62): with keys, every route but /health answers 401 in OpenAI's error
shape unless `Authorization: Bearer KEY` names one of them, before any work (plain, streamed, models,
embeddings); the official client with a right key works and with a wrong one raises its
AuthenticationError; no key is ever echoed; the CLI takes --api-key (repeatable) and LOOM_API_KEY,
refuses empty ones, and warns when it serves beyond loopback without a key."""
import pytest
import serve_extras

import loom

openai, httpx = serve_extras.need()

from test_openai_server import HELLO, Running, lm  # noqa: E402, F401  (lm: the shared tiny model fixture)

from loom.cli import serve as serve_cli  # noqa: E402
from loom.errors import ConfigError  # noqa: E402
from loom.serve import Server  # noqa: E402

KEYS = ["sk-first-0123456789", "second key!"]


@pytest.fixture(scope="module")
def guarded(lm):  # noqa: F811 - the imported fixture
    with loom.deterministic(True):
        running = Running(Server(lm, "tiny", max_batch=2, max_queue=4, api_keys=KEYS))
    yield running
    running.close()


def _client(running, key):
    return openai.OpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.mark.parametrize("key", KEYS)
def test_a_right_key_is_served(guarded, key):
    client = _client(guarded, key)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3)
    assert reply.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_a_wrong_key_is_refused_by_the_official_client(guarded):
    client = _client(guarded, "sk-wrong")
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3)
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):          # streamed: refused before any event
        list(client.completions.create(model="tiny", prompt="hi", max_tokens=3, stream=True))


@pytest.mark.parametrize("headers, says", [
    ({}, "No API key provided"),
    ({"Authorization": "Bearer"}, "Incorrect API key"),                            # no key at all
    ({"Authorization": "Bearer sk-first-012345678"}, "Incorrect API key"),          # a prefix of a key
    ({"Authorization": "Bearer sk-first-0123456789x"}, "Incorrect API key"),        # a key and more
    ({"Authorization": "Basic " + KEYS[0]}, "must be 'Bearer KEY'"),
    ({"Authorization": KEYS[0]}, "must be 'Bearer KEY'"),
])
def test_plain_http_without_a_right_key_gets_openais_401(guarded, headers, says):
    for method, path, body in (("POST", "/v1/chat/completions", {"model": "tiny", "messages": HELLO}),
                               ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi"}),
                               ("POST", "/v1/embeddings", {"model": "tiny", "input": "hi"}),
                               ("GET", "/v1/models", None), ("GET", "/metrics", None), ("GET", "/v1/nowhere", None)):
        response = httpx.request(method, guarded.url + path, json=body, headers=headers)
        assert response.status_code == 401, path
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
        assert error["param"] is None and says in error["message"]
        assert response.headers["www-authenticate"] == "Bearer"
        assert not any(key in response.text for key in KEYS + ["sk-first-012345678"])   # nothing echoed


def test_health_needs_no_key_and_the_scheme_is_case_blind(guarded):
    assert httpx.get(guarded.url + "/health").json()["status"] == "ok"
    response = httpx.get(guarded.url + "/v1/models", headers={"Authorization": "bearer " + KEYS[1]})
    assert response.status_code == 200 and response.json()["data"][0]["id"] == "tiny"


def test_bad_keys_are_config_errors(lm):  # noqa: F811
    with pytest.raises(ConfigError, match="one string"):
        Server(lm, "tiny", api_keys="secret")              # not six one-letter keys
    for keys, where in (([""], "api_keys[0]"), (["ok", " padded"], "api_keys[1]"), (["tab\tkey"], "api_keys[0]")):
        with pytest.raises(ConfigError, match=r"api_keys\[\d\]") as info:
            Server(lm, "tiny", api_keys=keys)
        assert where in str(info.value)


def test_cli_keys_and_the_exposure_warning(tmp_path, capsys):
    assert serve_cli.api_keys(["a", "b"], None) == ["a", "b"]
    assert serve_cli.api_keys(None, "from-env") == ["from-env"]
    assert serve_cli.api_keys(["a"], "e") == ["a", "e"]
    assert serve_cli.api_keys(None, None) == []
    with pytest.raises(ConfigError, match="--api-key"):
        serve_cli.api_keys(["a", ""], None)
    with pytest.raises(ConfigError, match="LOOM_API_KEY"):
        serve_cli.api_keys(None, " ")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert serve_cli.exposure_warning(host, 8000, []) is None
    for host in ("0.0.0.0", "192.168.1.5", "::", "myhost.example"):
        warning = serve_cli.exposure_warning(host, 8000, [])
        assert warning.startswith("loom: warning:") and "--api-key" in warning and "\n" not in warning
        assert serve_cli.exposure_warning(host, 8000, ["k"]) is None
    from cli_run import loom as run_loom
    code, _, err = run_loom(capsys, "serve", "--model", tmp_path, "--api-key", "")
    assert code == 3 and "--api-key" in err and err.count("\n") == 1
