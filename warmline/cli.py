"""The `warmline` command: serve, tenants, agents, knowledge, evaluation, migrations."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from warmline.config import Config
from warmline.errors import WarmlineError
from warmline.store import open_store
from warmline.store.base import Store


def _default_db() -> str:
    return os.environ.get("WARMLINE_DB") or "warmline.db"


async def _with_store(db: str, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    store = open_store(db)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _run(db: str, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    return asyncio.run(_with_store(db, fn))


# serve ---------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from warmline.logs import configure_logging
    from warmline.server import serve

    config = Config.from_env(
        host=args.host,
        port=args.port,
        db=args.db,
        redis_url=args.redis_url,
        demo=True if args.demo else None,
    )
    configure_logging(config)
    demo = None
    if config.demo:
        from warmline.demo import seed_demo

        demo = _run(config.db, seed_demo)

    def listening(host: str, port: int) -> None:
        shown = "localhost" if host in ("0.0.0.0", "127.0.0.1", "::") else host
        base = f"http://{shown}:{port}"
        if demo is not None:
            print(f"Warmline demo: tenant '{demo.tenant}', {demo.documents} help articles")
            print(f"  Customer widget:  {base}/")
            print(f"  Agent dashboard:  {base}/agent?token={demo.agent_token}")
            print(f"  Supervisor:       {base}/supervisor?token={demo.supervisor_token}")
            print(f"  Agent token:      {demo.agent_token}")
            print(f"  Supervisor token: {demo.supervisor_token}")
        # Tests and scripts wait for this line (the port is the real one, also with --port 0).
        print(f"Warmline listening on http://{host}:{port}", flush=True)

    serve(config, listening)
    return 0


# tenants -------------------------------------------------------------------------------------
def cmd_tenant_add(args: argparse.Namespace) -> int:
    tenant = _run(
        args.db, lambda s: s.add_tenant(args.tenant, args.name or "", args.allowed_origin or [])
    )
    print(f"tenant {tenant.id} added")
    return 0


def cmd_tenant_list(args: argparse.Namespace) -> int:
    for tenant in _run(args.db, lambda s: s.list_tenants()):
        origins = ",".join(tenant.allowed_origins) or "*"
        print(f"{tenant.id}\t{tenant.name}\torigins={origins}\tkb_version={tenant.kb_version}")
    return 0


def cmd_tenant_set_origins(args: argparse.Namespace) -> int:
    tenant = _run(args.db, lambda s: s.set_allowed_origins(args.tenant, args.allowed_origin or []))
    print(f"tenant {tenant.id}: allowed origins {', '.join(tenant.allowed_origins) or '* (any)'}")
    return 0


# agents --------------------------------------------------------------------------------------
def cmd_agent_add(args: argparse.Namespace) -> int:
    agent, token = _run(args.db, lambda s: s.add_agent(args.tenant, args.name, args.role))
    print(f"{agent.role} {agent.name} ({agent.id}) added to tenant {agent.tenant}")
    print("Token (shown once; only its hash is stored):")
    print(token)
    return 0


def cmd_agent_list(args: argparse.Namespace) -> int:
    for agent in _run(args.db, lambda s: s.list_agents(args.tenant)):
        state = "revoked" if agent.revoked else "active"
        print(f"{agent.id}\t{agent.tenant}\t{agent.role}\t{agent.name}\t{state}")
    return 0


def cmd_agent_revoke(args: argparse.Namespace) -> int:
    agent = _run(args.db, lambda s: s.revoke_agent(args.agent_id))
    print(f"{agent.id} ({agent.name}) revoked")
    return 0


# knowledge -----------------------------------------------------------------------------------
def _progress_bar(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} documents")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_kb_ingest(args: argparse.Namespace) -> int:
    from retrieval.ingest import ingest_paths

    async def go(store: Store) -> list[str]:
        await store.get_tenant(args.tenant)
        return await ingest_paths(store, args.tenant, args.paths, progress=_progress_bar)

    doc_ids = _run(args.db, go)
    print(f"ingested {len(doc_ids)} document(s) into tenant {args.tenant}")
    return 0


def cmd_kb_list(args: argparse.Namespace) -> int:
    for doc in _run(args.db, lambda s: s.list_documents(args.tenant)):
        print(f"{doc.doc_id}\t{doc.title}\t{doc.url}")
    return 0


def cmd_kb_delete(args: argparse.Namespace) -> int:
    deleted = _run(args.db, lambda s: s.delete_document(args.tenant, args.doc_id))
    print("deleted" if deleted else "no such document")
    return 0 if deleted else 1


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from retrieval.eval import run_eval

    result = run_eval(args.kb, args.queries, args.threshold, retriever=args.retriever)
    print(json.dumps(result))
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    version = _run(args.db, lambda s: s.schema_version())
    print(f"schema at version {version}")
    return 0


# parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warmline", description=__doc__)
    db_parent = argparse.ArgumentParser(add_help=False)
    db_parent.add_argument(
        "--db",
        default=_default_db(),
        help="SQLite path or postgresql:// URL (default $WARMLINE_DB, else ./warmline.db)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[db_parent], help="run the server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None, help="default $PORT, else 8000")
    serve.add_argument("--redis-url", default=None, help="Redis for several nodes")
    serve.add_argument("--demo", action="store_true", help="seed the demo tenant, agents and KB")
    serve.set_defaults(fn=cmd_serve)

    tenant = sub.add_parser("tenant", help="manage tenants").add_subparsers(
        dest="action", required=True
    )
    t_add = tenant.add_parser("add", parents=[db_parent])
    t_add.add_argument("tenant")
    t_add.add_argument("--name", default="")
    t_add.add_argument("--allowed-origin", action="append", help="repeatable")
    t_add.set_defaults(fn=cmd_tenant_add)
    t_list = tenant.add_parser("list", parents=[db_parent])
    t_list.set_defaults(fn=cmd_tenant_list)
    t_set = tenant.add_parser("set-origins", parents=[db_parent])
    t_set.add_argument("tenant")
    t_set.add_argument("--allowed-origin", action="append", help="repeatable; none = any")
    t_set.set_defaults(fn=cmd_tenant_set_origins)

    agent = sub.add_parser("agent", help="manage agents").add_subparsers(
        dest="action", required=True
    )
    a_add = agent.add_parser("add", parents=[db_parent])
    a_add.add_argument("--tenant", required=True)
    a_add.add_argument("--name", required=True)
    a_add.add_argument("--role", choices=("agent", "supervisor"), default="agent")
    a_add.set_defaults(fn=cmd_agent_add)
    a_list = agent.add_parser("list", parents=[db_parent])
    a_list.add_argument("--tenant", default=None)
    a_list.set_defaults(fn=cmd_agent_list)
    a_rev = agent.add_parser("revoke", parents=[db_parent])
    a_rev.add_argument("agent_id")
    a_rev.set_defaults(fn=cmd_agent_revoke)

    kb = sub.add_parser("kb", help="knowledge base").add_subparsers(dest="action", required=True)
    k_ing = kb.add_parser("ingest", parents=[db_parent])
    k_ing.add_argument("--tenant", required=True)
    k_ing.add_argument("paths", nargs="+")
    k_ing.set_defaults(fn=cmd_kb_ingest)
    k_list = kb.add_parser("list", parents=[db_parent])
    k_list.add_argument("--tenant", required=True)
    k_list.set_defaults(fn=cmd_kb_list)
    k_del = kb.add_parser("delete", parents=[db_parent])
    k_del.add_argument("--tenant", required=True)
    k_del.add_argument("doc_id")
    k_del.set_defaults(fn=cmd_kb_delete)

    ev = sub.add_parser("eval", help="evaluations").add_subparsers(dest="action", required=True)
    e_ret = ev.add_parser("retrieval", parents=[db_parent])
    e_ret.add_argument("--kb", required=True)
    e_ret.add_argument("--queries", required=True)
    e_ret.add_argument("--threshold", type=float, default=0.5)
    e_ret.add_argument("--retriever", choices=("bm25", "hybrid"), default="hybrid")
    e_ret.set_defaults(fn=cmd_eval_retrieval)

    db = sub.add_parser("db", help="database").add_subparsers(dest="action", required=True)
    d_mig = db.add_parser("migrate", parents=[db_parent])
    d_mig.set_defaults(fn=cmd_db_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except WarmlineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
