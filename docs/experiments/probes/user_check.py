"""Probe (lab material): check a running server as a user would, through the async SDK.

docs/experiments/rounds-and-serving.md, fortieth session (logs/s40-user-check.txt).  Start Redis and a server::

    redis-server --port 6391 --daemonize yes --save "" --appendonly no
    VSSM_REDIS_URL=redis://127.0.0.1:6391/0 .venv/bin/vssm serve --port 8072

``baselines`` (forty-second session, logs/s42-user-check.txt; the VRNN since the forty-third, logs/s43-user-check.txt):
the compiled AR Transformer, AR-GRU and VRNN loops, 8
concurrent sessions per model in 64-token chunks against one completion and against a completion asking for
log-probabilities; with a server of the release before them at ``OLD`` (a worktree, the same Redis), a session
begun there and continued here, and one begun here and continued there, against each release's own; and the time
of a 784-token completion from each server, by turns::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/user_check.py baselines

``sessions``: 8 concurrent sessions per image model drawing a 784-token image in chunks, each against one
completion; then, with state files that ``format1_upgrade.py write ... 300 1 BLOCK /tmp/f1u-NAME`` wrote under the
release before state format 2, a session whose stored state is overwritten in Redis with them and drawn on;
the first image of each model printed.  ``prompts``: a 392-token prompt appended in pieces through the API against
one prompt and one completion::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/user_check.py sessions
    PYTHONPATH=. .venv/bin/python docs/experiments/probes/user_check.py prompts

``onepass`` (forty-fifth session, logs/s45-user-check.txt): the one-pass VSSMs' completions from this release and
the one at ``OLD``, token for token, against sessions in chunks, and their times by turns::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/user_check.py onepass
"""

import asyncio
import json
import sys
from pathlib import Path

import redis

import vssm_client

URL = "http://127.0.0.1:8072"
OLD = "http://127.0.0.1:8073"
BASELINES = ("mnist-ar-transformer", "mnist-ar-gru", "shakespeare-ar-transformer", "shakespeare-ar-gru", "mnist-vrnn")


def ascii(tokens):
    return "\n".join("".join("#" if t else "." for t in tokens[r * 28 : (r + 1) * 28]) for r in range(28))


async def sessions_vs_completion(c, model, block, chunk):
    async def one(seed):
        s = await c.sessions.create(model=model, seed=seed, block_size=block)
        toks = []
        while len(toks) < 784:
            ch = await s.generate(max_tokens=min(chunk, 784 - len(toks)))
            toks += ch.tokens
        return toks

    got = await asyncio.gather(*(one(100 + k) for k in range(8)))
    ref = [
        (await c.completions.create(model=model, max_tokens=784, seed=100 + k, block_size=block)).choices[0].tokens
        for k in range(8)
    ]
    eq = sum(a == b for a, b in zip(got, ref, strict=True))
    print(f"{model} block {block} chunks of {chunk}: {eq}/8 sessions equal one completion")
    return got[0]


async def format1(c, model, block, path):
    if not Path(path + ".state").exists():  # written by an older release: probes/format1_upgrade.py
        print(f"{model}: format-1 upgrade skipped (no {path}.state: write it with probes/format1_upgrade.py)")
        return
    r = redis.Redis(port=6391)
    s = await c.sessions.create(model=model, seed=1000, block_size=block)
    first = (await s.generate(max_tokens=300)).tokens
    key = f"vssm:session:{{{s.id}}}"
    old = Path(path + ".state").read_bytes()
    assert r.hget(key, "state") is not None
    r.hset(key, "state", old)  # what the release before format 2 stored for this session
    rest = (await s.generate(max_tokens=484)).tokens
    ref = (await c.completions.create(model=model, max_tokens=784, seed=1000, block_size=block)).choices[0].tokens
    old_rest = json.loads(Path(path + ".json").read_text())[0]
    stored = r.hget(key, "state")
    meta = json.loads(stored[8 : 8 + int.from_bytes(stored[:8], "little")])["__metadata__"]
    print(
        f"{model}: format-1 state stored at 300 -> next 484 tokens equal the old release's own: {rest == old_rest}; "
        f"whole equals one completion: {first + rest == ref}; stored format now {meta['format']}"
    )


async def sessions_main():
    async with vssm_client.AsyncClient(base_url=URL) as c:
        imgs = {}
        for model, block, chunk in [
            ("mnist-vssm-prior16", 16, 64),
            ("mnist-vssm-prior", 28, 64),
            ("mnist-vssm", None, 37),
            ("mnist-ar-ssm", None, 64),
        ]:
            imgs[model] = await sessions_vs_completion(c, model, block, chunk)
        await format1(c, "mnist-vssm-prior16", 16, "/tmp/f1u-prior16")
        await format1(c, "mnist-ar-ssm", None, "/tmp/f1u-arssm")
        for m, t in imgs.items():
            print(m)
            print(ascii(t))
        txt = await c.completions.create(model="shakespeare-vssm-prior", prompt="ROMEO:\n", max_tokens=200, seed=3)
        print(repr(txt.choices[0].text))


async def by_turns(old, new, runs, **request):
    """The median ms of ``runs`` completions of ``request`` from each server, taken by turns (old first)."""
    import time

    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(runs):
        for name, client in (("old", old), ("new", new)):
            t0 = time.perf_counter()
            await client.completions.create(**request)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: sorted(v)[runs // 2] for k, v in times.items()}


async def prompted_by_release(c, old, model):

    agree = 0
    for seed in range(8):
        top = (await c.completions.create(model="mnist-ar-ssm", max_tokens=392, seed=seed)).choices[0].tokens
        a = (await c.completions.create(model=model, prompt=top, max_tokens=392, seed=seed)).choices[0].tokens
        b = (await old.completions.create(model=model, prompt=top, max_tokens=392, seed=seed)).choices[0].tokens
        agree += a == b
    print(f"{model} prompted (392 + 392): the two releases agree on {agree}/8 completions")
    med = await by_turns(old, c, 5, model=model, prompt=top, max_tokens=392, seed=1)
    print(
        f"{model}: 392-token prompt + 392 tokens through the API, median of 5 by turns: old {med['old']:.1f} ms, "
        f"new {med['new']:.1f} ms ({med['old'] / med['new']:.1f}x)"
    )


async def baselines_main():

    async with vssm_client.AsyncClient(base_url=URL) as c, vssm_client.AsyncClient(base_url=OLD) as old:
        for model in BASELINES:
            T = 784 if model.startswith("mnist") else 256
            imgs = await sessions_vs_completion(c, model, None, 64) if T == 784 else None
            scored = (await c.completions.create(model=model, max_tokens=T, seed=100, logprobs=1)).choices[0].tokens
            plain = (await c.completions.create(model=model, max_tokens=T, seed=100)).choices[0].tokens
            print(f"{model}: tokens with log-probabilities == without: {scored == plain}")
            for first, then, label in ((old, c, "old -> new"), (c, old, "new -> old")):
                s = await first.sessions.create(model=model, seed=2000)
                head = (await s.generate(max_tokens=T // 2)).tokens
                s2 = await then.sessions.get(s.id)
                tail = (await s2.generate(max_tokens=T - T // 2)).tokens
                own = (await first.completions.create(model=model, max_tokens=T, seed=2000)).choices[0].tokens
                other = (await then.completions.create(model=model, max_tokens=T, seed=2000)).choices[0].tokens
                same = sum(a == b for a, b in zip(head + tail, own, strict=True))
                print(
                    f"{model}: session {label}: {same}/{T} tokens equal the first release's completion; the two "
                    f"releases' completions agree on {sum(a == b for a, b in zip(own, other, strict=True))}/{T}"
                )
            med = await by_turns(old, c, 5, model=model, max_tokens=T, seed=5)
            print(
                f"{model}: {T}-token completion through the API, median of 5 by turns: old {med['old']:.1f} ms, "
                f"new {med['new']:.1f} ms ({med['old'] / med['new']:.1f}x)"
            )
            if model == "mnist-vrnn":  # its filter over a prompt is compiled too: prompted completions by release
                await prompted_by_release(c, old, model)
            if imgs:
                print(ascii(imgs))
        txt = await c.completions.create(model="shakespeare-ar-transformer", prompt="ROMEO:\n", max_tokens=200, seed=3)
        print(repr(txt.choices[0].text))


ONE_PASS = ("mnist-vssm", "shakespeare-vssm", "shakespeare-vssm-prior")  # served in one pass


async def one_pass_main():
    """The one-pass VSSMs' completions (a call that keeps no state: the compiled rounds' block 0 since the
    forty-fifth session): 8 seeds at three temperatures, unprompted and prompted, from this release and the one at
    ``OLD``, token for token; each against a session drawing the same in chunks; the time of a completion from
    each server by turns."""

    async with vssm_client.AsyncClient(base_url=URL) as c, vssm_client.AsyncClient(base_url=OLD) as old:
        for model in ONE_PASS:
            T = 784 if model.startswith("mnist") else 256
            prompt = "ROMEO:\n" if T == 256 else None
            agree = chunked = 0
            for k in range(8):
                args = dict(model=model, max_tokens=T, seed=300 + k, temperature=(1.0, 0.7, 1.3)[k % 3])
                if prompt and k % 2:
                    args["prompt"] = prompt
                a = (await c.completions.create(**args)).choices[0].tokens
                b = (await old.completions.create(**args)).choices[0].tokens
                agree += a == b
                s = await c.sessions.create(model=model, seed=args["seed"], prompt=args.get("prompt"))
                got = []
                while len(got) < T:
                    got += (await s.generate(max_tokens=min(64, T - len(got)), temperature=args["temperature"])).tokens
                chunked += got == a
            print(f"{model}: the two releases' completions agree {agree}/8; sessions in 64-token chunks {chunked}/8")
            med = await by_turns(old, c, 7, model=model, max_tokens=T, seed=5)
            print(
                f"{model}: {T}-token completion through the API, median of 7 by turns: old {med['old']:.1f} ms, "
                f"new {med['new']:.1f} ms ({med['old'] / med['new']:.2f}x)"
            )
        txt = await c.completions.create(model="shakespeare-vssm", prompt="ROMEO:\n", max_tokens=200, seed=3)
        print(repr(txt.choices[0].text))


async def prompts_main():
    async with vssm_client.AsyncClient(base_url="http://127.0.0.1:8072") as c:
        for model, block, pieces in [
            ("mnist-vssm-prior16", 16, [100, 37, 255]),
            ("mnist-vssm-prior", 28, [3, 389]),
            ("mnist-vssm", None, [200, 192]),
            ("mnist-ar-ssm", None, [1, 150, 241]),
            ("mnist-vrnn", None, [1, 150, 241]),
        ]:
            top = (await c.completions.create(model="mnist-ar-ssm", max_tokens=392, seed=7)).choices[0].tokens
            ref = (
                (await c.completions.create(model=model, prompt=top, max_tokens=392, seed=11, block_size=block))
                .choices[0]
                .tokens
            )
            one = await c.sessions.create(model=model, prompt=top, seed=11, block_size=block)
            got_one = []
            while len(got_one) < 392:
                got_one += (await one.generate(max_tokens=min(64, 392 - len(got_one)))).tokens
            s = await c.sessions.create(model=model, seed=11, block_size=block)
            at = 0
            for n in pieces:
                s = await s.append(top[at : at + n])
                at += n
            got = []
            while len(got) < 392:
                got += (await s.generate(max_tokens=min(50, 392 - len(got)))).tokens
            print(
                f"{model}: prompt in pieces {pieces} == one prompt: {got == got_one}; "
                f"session == completion: {got_one == ref}"
            )


if __name__ == "__main__":
    modes = {"sessions": sessions_main, "prompts": prompts_main, "baselines": baselines_main, "onepass": one_pass_main}
    asyncio.run(modes[sys.argv[1]]())
