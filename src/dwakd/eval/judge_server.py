"""A small OpenAI-compatible chat server around a local model (for tests and offline judging).

``python -m dwakd.eval.judge_server MODEL [--port 0]`` serves ``POST /v1/chat/completions`` and
``GET /v1/models`` on 127.0.0.1 only (standard library :mod:`http.server`, one request at a time).

- Plain requests: greedy generation of up to ``max_tokens`` tokens after the model's chat template.
- ``guided_choice`` (the vLLM extension, sent by ``dwakd judge --guided-choice``): the model scores
  each choice by its log-likelihood after the prompt and answers the most likely one, so even a
  small model gives a well-formed verdict.
- Fault injection for tests: ``server.fail_next`` (a list of HTTP status codes) makes the next
  requests fail with those codes, one per request.

It is not a production server: no batching, no streaming, no authentication (any key is accepted).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch


class ChatModel:
    """A causal LM and its tokenizer, answering chat requests (greedy or guided choice)."""

    def __init__(self, spec: str):
        from dwakd.models import load_model, load_tokenizer

        self.name = str(spec)
        self.model = load_model(spec).eval()
        self.tok = load_tokenizer(spec)
        cfg = self.model.config
        self.max_len = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)

    def _prompt_ids(self, messages, room: int) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        keep = max(1, self.max_len - room)
        return ids[-keep:]

    @torch.no_grad()
    def choose(self, messages, choices: list[str]) -> str:
        enc = [self.tok(c, add_special_tokens=False)["input_ids"] for c in choices]
        prompt = self._prompt_ids(messages, max(len(e) for e in enc) + 1)
        best, best_lp = choices[0], -float("inf")
        for choice, ids in zip(choices, enc):
            x = torch.tensor([prompt + ids])
            logp = torch.log_softmax(self.model(input_ids=x).logits[0, :-1].float(), -1)
            lp = float(logp[len(prompt) - 1:].gather(1, torch.tensor(ids)[:, None]).sum())
            if lp > best_lp:
                best, best_lp = choice, lp
        return best

    @torch.no_grad()
    def generate(self, messages, max_tokens: int) -> str:
        prompt = self._prompt_ids(messages, max_tokens)
        x = torch.tensor([prompt])
        out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                                  do_sample=False, pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        return self.tok.decode(out[0, len(prompt):], skip_special_tokens=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.chat.name, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self):  # noqa: N802
        srv = self.server
        srv.requests += 1
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        except json.JSONDecodeError:
            return self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
        if srv.fail_next:
            code = srv.fail_next.pop(0)
            return self._send(code, {"error": {"message": f"injected failure {code}", "type": "server_error"}})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._send(400, {"error": {"message": "'messages' must be a non-empty list", "type": "invalid_request_error"}})
        with srv.lock:
            if body.get("guided_choice"):
                content = srv.chat.choose(messages, [str(c) for c in body["guided_choice"]])
            else:
                content = srv.chat.generate(messages, int(body.get("max_tokens") or 16))
        self._send(200, {
            "id": f"chatcmpl-{srv.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", srv.chat.name),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })


class _Server(HTTPServer):
    def __init__(self, chat: ChatModel, port: int):
        super().__init__(("127.0.0.1", port), _Handler)
        self.chat = chat
        self.fail_next: list[int] = []
        self.requests = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def start_server(spec, port: int = 0) -> _Server:
    """Load ``spec`` and serve it from a daemon thread; ``server.url`` is the base URL,
    ``server.shutdown()`` stops it."""
    srv = _Server(spec if isinstance(spec, ChatModel) else ChatModel(spec), port)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dwakd.eval.judge_server", description=__doc__.splitlines()[0])
    p.add_argument("model", help="model: hub name, local directory or alias")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0 = any free port)")
    args = p.parse_args(argv)
    srv = _Server(ChatModel(args.model), args.port)
    print(f"serving {args.model} at {srv.url}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
