"""The forwarding backend: pass each call on to an OpenAI-compatible runtime, choosing the
adapter the way that runtime does.

- vLLM: `model` is the LoRA's served name (loaded by deploy_adapter); the base: its served name.
- llama.cpp server: `lora` gives per-request scales; the deployment's served name is
  `lora:<id>`. Every adapter the server loaded (`GET /lora-adapters`, read again every
  LORA_LIST_S) is named in the list: the route's adapter with scale 1, the others with 0, and
  for the base all with 0. An empty list would not be the base: llama-server reads it as "use
  the global scales", which `--lora` sets to 1.
- Ollama: `model` is the model deploy_adapter created for the adapter.

A call routed to the base (no adapter serves the route) goes to base_model (`learnloop gateway
--base NAME`): the name the runtime serves the base under. vLLM and Ollama need it (they answer
an unknown model name with an error); a llama.cpp server serves the one model it loaded whatever
the name, so there it is optional. A call routed to an
adapter whose latest deployment is not on this runtime's URL is refused (BackendError, a 502
naming the deploy command): answering it with the base would record the base's answer as the
adapter's run.

Every field of the request passes untouched but `metadata` (the gateway's), `model` and `lora`
(the route's), and the runtime's answer or chunks come back whole. A runtime that refuses the
request itself (400, 413, 422: over its context, a field it cannot take) is answered to the
client as it came; an unreachable runtime, any other error answer or an error event in a
stream becomes BackendError (the gateway's 502) with the runtime's message.
One httpx client per event loop is kept and its connections reused: making a client per
request cost about 30 ms (its TLS context), far more than the rest of the gateway's work. A
kept-alive connection the runtime closed without a word (llama-server does, after a stream) is
retried once on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from learning.errors import InvalidInput
from learning.gateway.inprocess import BackendError
from learning.gateway.protocol import BadRequest, Call

Runtime = Literal["vllm", "llamacpp", "ollama"]
TIMEOUT_S = 600.0
LORA_LIST_S = 30.0  # how long the llama.cpp server's list of loaded adapters is reused
PASSED_BACK = (400, 413, 422)  # the runtime refused the request itself: the client gets its answer


class Forwarding:
    many_choices = True  # n > 1 is the runtime's to answer

    def __init__(self, url: str, runtime: Runtime = "vllm", base_model: str | None = None):
        if runtime in ("vllm", "ollama") and not base_model:
            example = "the name `ollama list` shows" if runtime == "ollama" else "its --served-model-name or --model"
            raise InvalidInput(
                f"Forwarding to {runtime} needs the name it serves the base model under, for the requests "
                f"no adapter serves: pass --base NAME ({example})."
            )
        self.url, self.runtime, self.base_model = url.rstrip("/"), runtime, base_model
        self.name = f"{runtime} at {self.url}"
        self.http: Any = None
        self.loop: Any = None
        self.loras: tuple[float, list[int]] | None = None  # (when read, the ids llama-server loaded)

    def _client(self) -> Any:
        """The httpx client of the running event loop (a client is bound to the loop that made it)."""
        import httpx

        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.http, self.loop = httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT_S), loop
        return self.http

    async def aclose(self) -> None:
        """Close the reused client (the gateway's shutdown, on the event loop that made it)."""
        if self.http is not None and self.loop is asyncio.get_running_loop():
            await self.http.aclose()
        self.http = self.loop = None

    def _served(self, target: Any) -> str | None:
        """The name this runtime serves the target's adapter under (None: the base)."""
        adapter_id = getattr(target, "adapter_id", None)
        if adapter_id is None:
            return None
        served, where = getattr(target, "served_name", None), getattr(target, "deployment_url", None)
        lora = self.runtime == "llamacpp"
        if served and where and _same_url(where, self.url) and served.startswith("lora:") == lora:
            if not lora or served[len("lora:") :].isdigit():
                return served
        here = f"is deployed at {where} as {served}" if served else "has no deployment"
        raise BackendError(
            f"The route chose adapter {adapter_id}, which {here}, not on the {self.name}. "
            f"Deploy it there (learnloop deploy {adapter_id} --target {self.runtime} --url {self.url}) "
            "or point the gateway at the runtime that serves it."
        )

    async def _loaded_loras(self) -> list[int]:
        """The ids of the adapters the llama.cpp server loaded (none where it lists none)."""
        import httpx

        now = asyncio.get_running_loop().time()
        if self.loras is not None and now - self.loras[0] < LORA_LIST_S:
            return self.loras[1]
        try:
            response = await self._client().get("/lora-adapters")
        except httpx.HTTPError as exc:
            raise BackendError(f"The runtime {self.name} is unreachable: {exc}") from exc
        ids: list[int] = []
        if response.status_code < 400:
            try:
                ids = sorted({int(a["id"]) for a in response.json()})
            except (ValueError, KeyError, TypeError) as exc:
                raise BackendError(f"The runtime {self.name} listed its adapters in an unknown form ({exc}).") from exc
        self.loras = (now, ids)
        return ids

    async def _body(self, call: Call, target: Any) -> dict[str, Any]:
        body = {k: v for k, v in call.body.items() if k != "metadata"}
        if call.route is None:  # a plain model name: as sent
            return body
        served = self._served(target)
        body["model"] = self.base_model or call.model
        if self.runtime == "llamacpp":  # every loaded adapter named: the base is all of them at 0
            mine = int(served[len("lora:") :]) if served else None
            ids = sorted({*await self._loaded_loras(), *([mine] if mine is not None else [])})
            body["lora"] = [{"id": i, "scale": 1.0 if i == mine else 0.0} for i in ids]
        elif served:
            body["model"] = served
        return body

    def _path(self, call: Call) -> str:
        return "/v1/chat/completions" if call.kind == "chat" else "/v1/completions"

    async def _refused(self, response: Any) -> Exception:
        """A runtime's error answer: its 4xx about the request (over the context, a field it
        cannot take) goes back to the client as it came (a BadRequest with its object), any other
        becomes BackendError (the gateway's 502)."""
        detail = (await response.aread()).decode(errors="replace")
        if response.status_code in PASSED_BACK:
            try:
                body = json.loads(detail)
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                message = str(body["error"].get("message") or detail)[:2000]
                return BadRequest(message, body["error"].get("param"), response.status_code, body)
        return BackendError(f"The runtime {self.name} answered {response.status_code}: {detail[:500]}")

    async def complete(self, call: Call, target: Any) -> dict[str, Any]:
        """The runtime's answer object, as it sent it (the model named as the client asked)."""
        import httpx

        body = {**await self._body(call, target), "stream": False}
        try:
            try:
                response = await self._client().post(self._path(call), json=body)
            except httpx.RemoteProtocolError:  # a kept-alive connection the runtime had closed: once more
                response = await self._client().post(self._path(call), json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"The runtime {self.name} is unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise await self._refused(response)
        try:
            answer = response.json()
            if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
                raise ValueError("no choices")
        except ValueError as exc:
            raise BackendError(f"The runtime {self.name} sent an answer that is not OpenAI's format ({exc}).") from exc
        answer["model"] = call.model
        return answer

    async def stream(self, call: Call, target: Any) -> AsyncIterator[dict[str, Any]]:
        """The runtime's chunks as it sent them (the model named as the client asked). Usage is
        always asked for, to be recorded; the gateway drops it when the client did not ask. Closing
        this iterator closes the connection, which ends the runtime's generation."""
        import httpx

        options = {**(call.body.get("stream_options") or {}), "include_usage": True}
        body = {**await self._body(call, target), "stream": True, "stream_options": options}
        try:
            async with self._open_stream(call, body) as response:
                if response.status_code >= 400:
                    raise await self._refused(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = _read_chunk(line[5:])
                    if chunk is not None:
                        chunk["model"] = call.model
                        yield chunk
        except httpx.HTTPError as exc:
            raise BackendError(f"The runtime {self.name} is unreachable: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _open_stream(self, call: Call, body: dict[str, Any]) -> AsyncIterator[Any]:
        """The runtime's streamed response; a kept-alive connection the runtime had closed (it
        answered nothing) is tried once more on a new one."""
        import httpx

        client = self._client()
        request = client.build_request("POST", self._path(call), json=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.RemoteProtocolError:
            response = await client.send(client.build_request("POST", self._path(call), json=body), stream=True)
        try:
            yield response
        finally:
            await response.aclose()


def _read_chunk(data: str) -> dict[str, Any] | None:
    """A stream's event as a chunk (None: not one); an error event becomes BackendError."""
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    if not isinstance(chunk, dict):
        return None
    if chunk.get("error"):  # vLLM and llama.cpp report a failure mid-stream as an error event
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise BackendError(f"The runtime failed while streaming: {str(message)[:500]}")
    return chunk


def _same_url(a: str, b: str) -> bool:
    """Whether two runtime URLs name the same server (localhost and 127.0.0.1 alike)."""

    def norm(url: str) -> str:
        return url.rstrip("/").lower().replace("://localhost", "://127.0.0.1")

    return norm(a) == norm(b)
