"""Which labeler names the clusters: offline keywords (default), the local SmolLM2-Instruct, or any
OpenAI-compatible endpoint. Shaped like dagster-openai's OpenAIResource (api_key, a client built
on demand, token usage reported in the asset's metadata) with base_url added.

The API key is a plain str field meant to be set with dg.EnvVar("OPENAI_API_KEY"): Dagster then
stores the variable's name, not its value, and masks it; this module never logs it or puts it in
metadata (`public_config` is what goes there).
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

KINDS = ("keywords", "local", "openai")


class LabelerResource(dg.ConfigurableResource):
    """The labeler behind cluster_labels (and node_labels), and the LLM scorer's client."""

    kind: str = Field(default="keywords", description="'keywords' (offline c-TF-IDF, default), 'local' "
                      "(SmolLM2-135M-Instruct, offline) or 'openai' (any OpenAI-compatible endpoint)")
    base_url: str = Field(default="", description="openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, "
                          "Ollama, llama.cpp server); empty: the OpenAI API")
    model: str = Field(default="", description="openai: the model name; local: '' for SmolLM2-135M-Instruct")
    api_key: str = Field(default="", description="openai: set with dg.EnvVar('OPENAI_API_KEY'); never logged")
    concurrency: int = Field(default=4, description="openai: requests in flight at once")
    timeout: float = Field(default=30.0, description="openai: seconds per request before it is retried")
    max_retries: int = Field(default=4, description="openai: retries per request (exponential backoff)")
    max_new_tokens: int = Field(default=48, description="local: tokens generated per label")
    device: str = Field(default="cpu", description="local: torch device of the generating model")
    fallback_to_keywords: bool = Field(default=False, description="LLM kinds: label a request whose completion "
                                       "failed with the keyword labeler instead of failing the run")
    score_with_llm: bool = Field(default=False, description="LLM kinds: also run the detection scorer "
                                 "(the LLM says which held-out windows fit; more requests)")
    force_regenerate: bool = Field(default=False, description="Ignore cached labels and make new ones")
    batch_size: int = Field(default=8, description="Requests given to the labeler at once; each finished batch is "
                            "written to the cache before the next starts")

    def _check_kind(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"LabelerResource.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "openai" and not self.model:
            raise ValueError("LabelerResource.kind='openai' needs model (the endpoint's model name)")

    def chat_client(self):
        """The chat client of an LLM kind (None for keywords); imported lazily (latent_atlas.labels.llm)."""
        self._check_kind()
        if self.kind == "keywords":
            return None
        from latent_atlas.labels.llm import LocalChatClient, OpenAIChatClient

        if self.kind == "local":
            from latent_atlas.data.models import SMOLLM2
            from latent_atlas.data.paths import model_cache_dir

            return LocalChatClient(model_name=self.model or SMOLLM2, cache_dir=model_cache_dir(), device=self.device,
                                   max_new_tokens=self.max_new_tokens)
        return OpenAIChatClient(base_url=self.base_url or None, model=self.model, api_key=self.api_key,
                                concurrency=self.concurrency, timeout=self.timeout, max_retries=self.max_retries)

    def labeler(self, client=None):
        """The Labeler of this kind (a KeywordLabeler, or an LLMLabeler over `client` / chat_client())."""
        from latent_atlas.labels.keywords import KeywordLabeler

        self._check_kind()
        if self.kind == "keywords":
            return KeywordLabeler()
        from latent_atlas.labels.llm import LLMLabeler

        client = client if client is not None else self.chat_client()
        return LLMLabeler(client, name="local-llm" if self.kind == "local" else "openai",
                          fallback=KeywordLabeler() if self.fallback_to_keywords else None)

    def public_config(self) -> dict:
        """What may go into metadata: everything but the API key."""
        return {"kind": self.kind, "base_url": self.base_url, "model": self.model, "concurrency": self.concurrency,
                "timeout": self.timeout, "max_retries": self.max_retries, "score_with_llm": self.score_with_llm}
