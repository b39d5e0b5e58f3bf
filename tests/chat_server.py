"""A real OpenAI-compatible chat-completions server over the tiny test model, for the endpoint tests.

It stands in for vLLM, TGI and SGLang (and hosted APIs): the same `POST /v1/chat/completions`
request and response bodies, `n` choices per request (or only one, like TGI, with
honour_n=False), and faults on demand, by prompt: `server.faults["Question 2?"] = ["429", "ok"]`
makes that prompt's next requests get a 429 with Retry-After, then an answer. It runs aiohttp on
its own thread and counts what a test asserts on: the requests (with their Authorization header),
and the most requests ever in flight at once.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import torch
from aiohttp import web

from training.models import load_causal_lm, load_tokenizer

FAULTS = ("ok", "429", "500", "slow", "malformed", "no-choices", "n-refused", "hold")


@dataclass
class Seen:
    prompt: str
    n: int
    authorization: str | None
    seed: int | None
    at: float
    model: str = ""
    messages: list = field(default_factory=list)
    status: int = 200


@dataclass
class ChatServer:
    model_dir: str
    honour_n: bool = True
    retry_after: str = "1"
    slow_seconds: float = 6.0
    hold_until_in_flight: int | None = None
    """Each request waits (up to 2 s) until this many are in flight: makes the concurrency limit visible."""
    faults: dict[str, list[str]] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    max_in_flight: int = 0
    on_request: object = None
    """Called (on a thread of the server's) with each request's prompt text."""

    def __post_init__(self):
        self.in_flight = 0
        self._generate_lock = threading.Lock()
        self.model = load_causal_lm(self.model_dir, device=torch.device("cpu"))
        self.tokenizer = load_tokenizer(self.model_dir)
        self.released = threading.Event()  # set to let "hold" requests answer

    # LIFECYCLE

    def start(self) -> str:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.released.set()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        async def main():
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/v1/load_lora_adapter", self._load_lora_adapter)
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            await self._stop.wait()
            await runner.cleanup()

        asyncio.run(main())

    # THE PROTOCOL

    async def _load_lora_adapter(self, request: web.Request) -> web.Response:
        """vLLM's runtime LoRA loading: the adapter's name becomes a served model."""
        body = await request.json()
        self.adapters[body["lora_name"]] = body["lora_path"]
        return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        record = Seen(prompt, body.get("n", 1), request.headers.get("Authorization"), body.get("seed"), time.monotonic(),
                      body["model"], body["messages"])
        self.seen.append(record)
        if self.on_request is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.on_request, prompt)
        queue = self.faults.get(prompt)
        fault = queue.pop(0) if queue else "ok"
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._answer(fault, body, prompt)
            record.status = response.status
            return response
        finally:
            self.in_flight -= 1

    async def _answer(self, fault: str, body: dict, prompt: str) -> web.Response:
        if fault == "429":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429, headers={"Retry-After": self.retry_after})
        if fault == "500":
            return web.json_response({"error": {"message": "engine crashed", "type": "server_error"}}, status=500)
        if fault == "malformed":
            return web.Response(text='{"id": "x", "choices": [', content_type="application/json")
        if fault == "n-refused" and body.get("n", 1) > 1:
            return web.json_response({"error": {"message": "n must be 1", "type": "invalid_request_error"}}, status=400)
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        if fault == "hold":
            await asyncio.get_running_loop().run_in_executor(None, self.released.wait, 30)
        if self.hold_until_in_flight:
            deadline = time.monotonic() + 2
            while self.in_flight < self.hold_until_in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        n = body.get("n", 1) if self.honour_n else 1
        if fault == "no-choices":
            n = 0
        texts = await asyncio.get_running_loop().run_in_executor(None, self._sample, body, n)
        return web.json_response(_completion(body["model"], texts))

    def _sample(self, body: dict, n: int) -> list[tuple[str, str]]:
        if n == 0:
            return []
        with self._generate_lock:
            torch.manual_seed(body.get("seed") or 0)
            ids = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
            out = self.model.generate(**ids, do_sample=True, temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
                                      max_new_tokens=body.get("max_tokens", 8), num_return_sequences=n, pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, ids["input_ids"].shape[1]:]
        eos = self.tokenizer.eos_token_id
        return [(self.tokenizer.decode(row, skip_special_tokens=True), "stop" if eos in row.tolist() else "length") for row in new]


def _completion(model: str, texts: list[tuple[str, str]]) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason} for i, (text, reason) in enumerate(texts)],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

