"""
The hub path, offline: `--init_from=org/name` and `--tokenizer=org/name` go through huggingface_hub's
real download code (list_repo_files, snapshot_download) against a local endpoint (HF_ENDPOINT =
a small HTTP server on 127.0.0.1, in a thread of this test) that serves a tiny random checkpoint in
the hub's layout; the downloaded model gives the logits of the files served, the tokenizer their ids.
"""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from urllib.parse import unquote, urlparse

import pytest
import torch

transformers = pytest.importorskip('transformers')
pytest.importorskip('huggingface_hub')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO, SHA = 'tiny-org/tiny-llama', 'a' * 40


def hub_handler(files, seen):
    """A handler for the routes huggingface_hub 2.x calls: the repo's revision info and file tree
    (api/models/...), and resolve/<revision>/<file> with the headers hf_hub_download reads
    (X-Repo-Commit, ETag, Content-Length)."""
    def etag(name):
        return hashlib.sha256(files[name]).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body=b'', headers=None, send_body=True):
            self.send_response(status)
            for k, v in {'Content-Length': str(len(body)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def route(self, send_body):
            path = unquote(urlparse(self.path).path)
            seen.append(f"{self.command} {path}")
            api = f'/api/models/{REPO}'
            if path == api or path.startswith(f'{api}/revision/'):
                info = dict(id=REPO, modelId=REPO, sha=SHA, private=False, disabled=False, gated=False,
                            siblings=[{'rfilename': n} for n in sorted(files)])
                return self.reply(200, json.dumps(info).encode(), {'Content-Type': 'application/json'}, send_body)
            if path.startswith(f'{api}/tree/'):  # tree/<revision or the commit>[/path]
                tree = [dict(type='file', path=n, size=len(b), oid=hashlib.sha1(b).hexdigest()) for n, b in sorted(files.items())]
                return self.reply(200, json.dumps(tree).encode(), {'Content-Type': 'application/json'}, send_body)
            prefix = f'/{REPO}/resolve/'
            if path.startswith(prefix):
                revision, _, name = path[len(prefix):].partition('/')
                if revision in ('main', SHA) and name in files:
                    return self.reply(200, files[name], {'X-Repo-Commit': SHA, 'ETag': f'"{etag(name)}"',
                                                         'Content-Type': 'application/octet-stream'}, send_body)
                return self.reply(404, b'{"error": "Entry not found"}', {'X-Error-Code': 'EntryNotFound'}, send_body)
            self.reply(404, b'{"error": "Repository not found"}', {'X-Error-Code': 'RepoNotFound'}, send_body)

        def do_GET(self):
            self.route(True)

        def do_HEAD(self):
            self.route(False)

    return Handler


@pytest.fixture
def local_hub(tmp_path):
    """(endpoint URL, served files {name: bytes}, request log); the server stops with the test."""
    from components import tokenizer
    repo = tmp_path / 'repo'
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64, vocab_size=257)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(repo))
    tokenizer.write_hf_tokenizer_files('byte', str(repo))
    files = {p.name: p.read_bytes() for p in repo.iterdir() if p.is_file()}
    seen = []
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), hub_handler(files, seen))
    server.timeout = 1
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', str(repo), seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


CHECK = """
import json, sys, torch, transformers
from components.checkpoint import load_model
from components import tokenizer
model, tok = load_model(sys.argv[1])
ref = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.float32).eval()
x = torch.randint(0, 257, (2, 9), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    diff = (ref(x).logits - model(x, targets=x)[0]).abs().max().item()
enc = tokenizer.get_encoding(sys.argv[1])
try:
    load_model('tiny-org/missing')
except Exception as e:
    missing = f"{type(e).__name__}: {e}"
print(json.dumps(dict(diff=diff, tok=tok, ids=enc.encode_ordinary('héllo'), eot=enc.eot_token, missing=missing,
                      fingerprint=tokenizer.tokenizer_fingerprint(enc) == tokenizer.tokenizer_fingerprint(tokenizer.get_encoding('byte')))))
"""


def test_init_from_and_tokenizer_hub_names_download_through_huggingface_hub(local_hub, tmp_path):
    endpoint, served, seen = local_hub
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / 'hf_home'), HF_HUB_DISABLE_TELEMETRY='1',
               HF_HUB_DISABLE_XET='1', HF_HUB_ETAG_TIMEOUT='5', HF_HUB_DOWNLOAD_TIMEOUT='5', OMP_NUM_THREADS='1',
               PYTHONPATH=ROOT)
    env.pop('HF_HUB_OFFLINE', None)
    r = subprocess.run([sys.executable, "-c", CHECK, REPO, served], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['diff'] < 1e-5 and out['eot'] == 256 and out['fingerprint']
    assert out['ids'] == list('héllo'.encode())
    assert out['tok'].startswith(str(tmp_path / 'hf_home'))   # the snapshot in HF_HOME's hub cache
    assert any(s.startswith('GET /api/models/') for s in seen)
    assert any(s == f'GET /{REPO}/resolve/{SHA}/model.safetensors' or s == f'GET /{REPO}/resolve/main/model.safetensors'
               for s in seen), seen
    # an unknown repo (the server's 404 with X-Error-Code: RepoNotFound) is one line, not a traceback
    assert out['missing'].startswith('UserError: ') and 'tiny-org/missing' in out['missing']
    assert '\n' not in out['missing'] and 'RepositoryNotFoundError' in out['missing']
