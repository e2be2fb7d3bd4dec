"""The API key is sent to the server and appears nowhere else: cache files, accounting dumps,
exception messages, reprs."""

from __future__ import annotations

import asyncio
import json

import pytest

from fault_server import FaultServer
from longctx.llm import Accounting, LLMCallFailed, LLMClient, LLMConfig, LLMSetupError, ResponseCache

FAKE_KEY = "sk-test-0123456789abcdefSECRET"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def test_key_reaches_the_server_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_TEST_KEY", FAKE_KEY)
    accounting = Accounting()
    config_repr = client_repr = ""
    with FaultServer() as server:
        config = LLMConfig(base_url=server.base_url, model="m", api_key_env="LONGCTX_TEST_KEY",
                           max_attempts=2, backoff_base_s=0.01)

        async def run():
            nonlocal client_repr
            with ResponseCache(tmp_path, "responses-0-of-1") as cache:
                async with LLMClient(config, cache=cache, accounting=accounting) as llm:
                    client_repr = repr(llm)
                    ok = await llm.chat([{"role": "user", "content": "hello"}], schema=SCHEMA, stage="s", doc_id="d")
                    with pytest.raises(LLMCallFailed) as leaked:
                        # this server echoes the Authorization header in its 401 body
                        await llm.chat([{"role": "user", "content": "x\nfaults: 401echo"}], schema=SCHEMA)
                    with pytest.raises(LLMCallFailed) as broken:
                        await llm.chat([{"role": "user", "content": "y\nfaults: 500,500"}], schema=SCHEMA)
                    return ok, leaked.value, broken.value
        ok, leaked, broken = asyncio.run(run())
        config_repr = repr(config)
        seen_auth = {e["authorization"] for e in server.log}

    assert seen_auth == {f"Bearer {FAKE_KEY}"}
    assert ok.data["answer"]
    assert "invalid key in Bearer ***" in str(leaked)  # redacted, not dropped
    texts = [str(leaked), repr(leaked), str(broken), leaked.detail, client_repr, config_repr,
             json.dumps(accounting.to_dict()), repr(accounting), repr(ok)]
    assert not [t for t in texts if FAKE_KEY in t]
    files = sorted(tmp_path.iterdir())
    assert files and not [f.name for f in files if FAKE_KEY.encode() in f.read_bytes()]


def test_missing_key_variable_is_a_clear_setup_error(monkeypatch):
    monkeypatch.delenv("LONGCTX_UNSET_KEY", raising=False)
    config = LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="LONGCTX_UNSET_KEY")

    async def run():
        async with LLMClient(config):
            pass
    with pytest.raises(LLMSetupError, match="LONGCTX_UNSET_KEY is empty or unset"):
        asyncio.run(run())


def test_a_key_pasted_as_the_variable_name_is_refused():
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=FAKE_KEY)
