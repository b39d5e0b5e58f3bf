"""Sample chat completions from an OpenAI-compatible server: vLLM, TGI, SGLang or a hosted API.

    endpoint = Endpoint(base_url="http://gpu-box:8000/v1", model="policy-r3", api_key=os.environ["KEY"])
    for batch in generate_from_endpoint(endpoint, prompts, SamplingConfig(n_per_prompt=4), should_stop=stop):
        store(batch)            # a list of PromptResult, as prompts finish (in any order)

Requests go through the official `openai` client, which already retries what is worth retrying
(timeouts, dropped connections, 408/409/429/5xx) with exponential backoff and jitter, honouring
`Retry-After` up to two minutes; what still fails after `max_retries` is that prompt's error.
The calls run on an asyncio loop in a thread of their own: at most `max_concurrency` requests
are in flight, request starts are spaced to stay under `requests_per_minute`, and stopping
(should_stop() or closing the iterator) cancels the in-flight requests at once.

n samples per prompt: one request with `n` while the server honours it; once a server answers
with fewer choices than asked (TGI, some hosted APIs) or refuses `n` > 1, the rest is asked one
sample per request. Each request carries its own seed, derived from (seed, prompt, first sample),
so split requests do not repeat each other. Plain Python: nothing here knows of Django.
"""
from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, cast

import openai

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

Messages = list[dict[str, str]]
N_REFUSED = "n refused"  # a 400 to a request with n > 1: asked again one sample at a time


class EndpointError(RuntimeError):
    """The generation as a whole could not run (not one prompt's failure: those are in PromptResult.error)."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to call the server."""

    base_url: str
    """The server's OpenAI-compatible root, e.g. http://host:8000/v1."""
    model: str
    """The served model name (vLLM's --served-model-name, or a --lora-modules NAME)."""
    api_key: str | None = None
    """The key itself, read by the caller from its environment variable; never stored or logged."""
    max_concurrency: int = 8
    """Most requests in flight at once."""
    requests_per_minute: int | None = None
    """Request starts are spaced to stay under this rate; None: no limit."""
    timeout: float = 120.0
    """Seconds one request may take before it is abandoned (and retried)."""
    max_retries: int = 4
    """Retries of one request on timeouts, dropped connections, 429 and 5xx."""

    def __repr__(self) -> str:  # the key never reaches a log line or a traceback
        return f"Endpoint(base_url={self.base_url!r}, model={self.model!r}, api_key={'***' if self.api_key else None})"


@dataclass
class SamplingConfig:
    """How to sample: the chat-completions parameters of every request."""

    temperature: float = 0.7
    """Softmax temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_tokens: int = 128
    """Most tokens generated per response."""
    n_per_prompt: int = 1
    """Responses wanted for each prompt."""
    seed: int | None = 0
    """Sampling seed sent to the server (each request gets its own, derived from this); None sends none."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    """One sampled response."""

    prompt_index: int
    sample_index: int
    text: str
    finish_reason: str | None
    """"stop" (the model ended it), "length" (cut at max_tokens), or what the server said."""


@dataclass(frozen=True)
class PromptResult:
    """What one prompt got: its samples (maybe fewer than asked) and, if it fell short, why."""

    prompt_index: int
    samples: tuple[Sample, ...]
    error: str | None = None


def generate_from_endpoint(
    endpoint: Endpoint, prompts: list[Messages], config: SamplingConfig, should_stop: Callable[[], bool] | None = None,
    poll_seconds: float = 0.2, max_batch: int = 256,
) -> Iterator[list[PromptResult]]:
    """Sample config.n_per_prompt responses to each chat prompt, yielding finished prompts in batches.

    should_stop() is asked every poll_seconds; True yields what has already arrived, then cancels
    the requests in flight and ends the iteration (closing the iterator cancels them too); what was
    yielded stays valid.
    """
    results: queue.Queue = queue.Queue()
    runner = _Runner(endpoint, prompts, config, results.put)
    thread = threading.Thread(target=runner.run, name="endpoint-generation", daemon=True)
    thread.start()
    try:
        finished = 0
        while finished < len(prompts):
            batch = _take(results, poll_seconds, max_batch)
            if runner.failure is not None:
                raise EndpointError(runner.failure)
            if batch:
                finished += len(batch)
                yield batch
            if should_stop is not None and should_stop():
                # answers that arrived before the stop was seen are kept, not dropped with the requests in flight
                while rest := _take(results, 0, max_batch):
                    yield rest
                return
    finally:
        runner.cancel()
        thread.join()


def load_lora_adapter(endpoint: Endpoint, name: str, path: str) -> None:
    """Ask a vLLM server to load a LoRA adapter under `name` while it runs (POST {base_url}/load_lora_adapter).

    The server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and must read `path` (a shared disk);
    afterwards `name` is a served model. EndpointError says why it refused.
    """
    with openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key or "EMPTY", timeout=endpoint.timeout,
                       max_retries=endpoint.max_retries) as client:
        try:
            client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": path}, cast_to=str)
        except openai.APIError as exc:
            raise EndpointError(redact(f"the server did not load adapter {name!r}: {exc}"[:400], endpoint.api_key)) from exc


def _take(results: queue.Queue, wait: float, most: int) -> list[PromptResult]:
    """What has arrived, waiting up to `wait` seconds for the first."""
    try:
        batch = [results.get(timeout=wait)]
    except queue.Empty:
        return []
    while len(batch) < most:
        try:
            batch.append(results.get_nowait())
        except queue.Empty:
            break
    return [result for result in batch if result is not None]


def request_seed(seed: int | None, prompt_index: int, first_sample: int) -> int | None:
    """A seed per request, the same for the same (seed, prompt, first sample): reruns repeat, splits differ."""
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}/{prompt_index}/{first_sample}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


class _Runner:
    """The asyncio side, on its own thread: workers take prompts, requests share one semaphore and pacer."""

    def __init__(self, endpoint: Endpoint, prompts: list[Messages], config: SamplingConfig, emit: Callable):
        self.endpoint, self.prompts, self.config, self.emit = endpoint, prompts, config, emit
        self.failure: str | None = None
        self.n_honoured = config.n_per_prompt > 1
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._cancelled = False

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a failure of the whole (no client, a bug): the iterator raises it
            self.failure = redact(f"{type(exc).__name__}: {exc}", self.endpoint.api_key)
        finally:
            self.emit(None)  # wake the consumer

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._loop is not None and self._task is not None:
                try:
                    self._loop.call_soon_threadsafe(self._task.cancel)
                except RuntimeError:  # the loop already closed
                    pass

    async def _main(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        endpoint = self.endpoint
        self._semaphore = asyncio.Semaphore(endpoint.max_concurrency)
        self._pacer = _Pacer(endpoint.requests_per_minute)
        # "EMPTY", not None: with None the client would send OPENAI_API_KEY from the worker's environment to this server
        async with openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key or "EMPTY",
                                      timeout=endpoint.timeout, max_retries=endpoint.max_retries) as client:
            self._client = client
            todo = iter(range(len(self.prompts)))  # shared: each worker takes the next prompt
            workers = min(endpoint.max_concurrency, len(self.prompts))
            await asyncio.gather(*(self._worker(todo) for _ in range(workers)))

    async def _worker(self, todo) -> None:
        for index in todo:
            self.emit(await self._sample_prompt(index))

    async def _sample_prompt(self, index: int) -> PromptResult:
        wanted = self.config.n_per_prompt
        samples: list[Sample] = []
        error = None
        while len(samples) < wanted and error is None:
            missing = wanted - len(samples)
            asks = [missing] if self.n_honoured else [1] * missing
            starts = [len(samples) + sum(asks[:k]) for k in range(len(asks))]
            answers = await asyncio.gather(*(self._request(index, start, ask) for start, ask in zip(starts, asks)))
            for (texts, problem), ask in zip(answers, asks):
                if problem == N_REFUSED:
                    self.n_honoured = False  # this server does not do n: ask one at a time from now on
                    continue
                if problem is None and not texts:
                    problem = "the server answered with no choices"
                if 0 < len(texts) < ask:
                    self.n_honoured = False  # fewer choices than asked: same lesson
                base = len(samples)
                samples.extend(Sample(index, base + k, text, reason) for k, (text, reason) in enumerate(texts[:ask]))
                error = error or problem
        return PromptResult(index, tuple(samples[:wanted]), error)

    async def _request(self, index: int, first_sample: int, n: int) -> tuple[list[tuple[str, str | None]], str | None]:
        """One chat-completions call: ([(text, finish reason)], None), or ([], why it failed)."""
        c, endpoint = self.config, self.endpoint
        seed = request_seed(c.seed, index, first_sample) if c.seed is not None else openai.omit  # omit: not sent
        messages = cast("list[ChatCompletionMessageParam]", self.prompts[index])  # role/content dicts, as the SDK's TypedDicts
        async with self._semaphore:
            await self._pacer.wait()
            try:
                completion = await self._client.chat.completions.create(
                    model=endpoint.model, messages=messages, n=n, temperature=c.temperature, top_p=c.top_p,
                    max_tokens=c.max_tokens, seed=seed,
                )
                return _choices(completion), None
            except openai.BadRequestError as exc:
                if n > 1:
                    return [], N_REFUSED
                return [], self._describe(exc)
            except Exception as exc:  # one request's failure is its prompt's, not the run's
                return [], self._describe(exc)

    def _describe(self, exc: Exception) -> str:
        retries = self.endpoint.max_retries
        if isinstance(exc, openai.APITimeoutError):
            why = f"timed out after {self.endpoint.timeout:g} s, {retries + 1} attempts"
        elif isinstance(exc, openai.APIStatusError):
            why = f"HTTP {exc.status_code}" + (f" after {retries} retries" if _retried(exc.status_code) else "") + f": {exc.message}"
        elif isinstance(exc, openai.APIConnectionError):
            why = f"could not reach the server ({retries + 1} attempts): {exc}"
        elif isinstance(exc, (ValueError, openai.APIResponseValidationError, MalformedAnswer)):
            why = f"malformed answer: {exc}"
        else:
            why = f"{type(exc).__name__}: {exc}"
        return redact(why[:300], self.endpoint.api_key)


class MalformedAnswer(ValueError):
    pass


def _choices(completion) -> list[tuple[str, str | None]]:
    """(text, finish reason) of each choice, or MalformedAnswer if the body is not a chat completion."""
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list):
        raise MalformedAnswer("no list of choices in the body")
    texts = []
    for choice in choices:
        content = getattr(getattr(choice, "message", None), "content", None)
        if not isinstance(content, str):
            raise MalformedAnswer("a choice without message content")
        texts.append((content, getattr(choice, "finish_reason", None)))
    return texts


def _retried(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def redact(text: str, secret: str | None) -> str:
    """The text with the secret blanked out (a server may echo what it was sent)."""
    return text.replace(secret, "***") if secret else text


class _Pacer:
    """Spaces request starts 60/rpm seconds apart (asyncio is one thread: no lock needed)."""

    def __init__(self, per_minute: int | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next_start = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self.next_start)
        self.next_start = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)
