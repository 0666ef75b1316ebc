"""``seqzoo publish``: export a saved model as a self-contained Hub repository and upload it (or only build it)."""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """\
Export a saved seqzoo model folder as a Hub repository -- weights (safetensors), config.json with auto_map,
tokenizer, generation config, model card and the self-contained code that lets trust_remote_code=True load it
without seqzoo -- and upload it in one commit. The token comes from HF_TOKEN or `hf auth login`; the endpoint
from HF_ENDPOINT. With --dry-run --output DIR the folder is only built, and nothing is uploaded. Over an earlier
checkpoint in REPO_ID, the commit also deletes the weights, bundled code and seqzoo_training.json that the new one
does not write; the owner's other files stay.

`seqzoo publish --refresh-code REPO_ID` rewrites only the code of an existing repository with this seqzoo's
(weights, tokenizer and card stay): code published by an older seqzoo may not work with a newer transformers."""


def register(subparsers: Any) -> None:
    from seqzoo.hub.cards import DEFAULT_LICENSE, LICENSES_URL

    p = subparsers.add_parser("publish", help="export a saved model for the Hub and upload it", description=DESCRIPTION)
    p.add_argument("model_dir", nargs="?", help="folder written by save_pretrained, `seqzoo new` or `seqzoo train`")
    p.add_argument("repo_id", nargs="?", help="Hub model repository, e.g. your-name/lstm-tinystories")
    p.add_argument("--refresh-code", metavar="REPO_ID", default=None,
                   help="rewrite only the bundled code of this existing repository (no model folder needed)")
    p.add_argument("--private", action="store_true", help="create the repository as private (if it is new)")
    p.add_argument("--revision", default=None, help="branch to commit to, created from main if missing")
    p.add_argument("--commit-message", default=None, help="message of the upload commit (default: names the model)")
    p.add_argument("--license", default=None, metavar="ID",
                   help=f"the Hub license identifier for the model card (default {DEFAULT_LICENSE}; the list: "
                        f"{LICENSES_URL}), or 'other' with --license-name")
    p.add_argument("--license-name", default=None, metavar="NAME",
                   help="with --license other: the license's id, such as my-license-1.0")
    p.add_argument("--license-link", default=None, metavar="URL",
                   help="with --license other: where the license's text is (a URL, or a file in the repository)")
    p.add_argument("--dry-run", action="store_true", help="only build the repository folder (needs --output)")
    p.add_argument("--output", default=None, metavar="DIR", help="with --dry-run: where to build the folder")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    from seqzoo.hub.cards import DEFAULT_LICENSE
    from seqzoo.hub.publishing import PublishError, export_folder, publish, refresh_code
    from seqzoo.outputs import describe
    from seqzoo.utils import quiet_transformers

    licensing = {"license": DEFAULT_LICENSE if args.license is None else args.license,
                 "license_name": args.license_name, "license_link": args.license_link}
    if args.refresh_code is not None:
        card_only = [flag for flag, value in (("--license", args.license), ("--license-name", args.license_name),
                                              ("--license-link", args.license_link), ("--output", args.output))
                     if value is not None]
        if args.model_dir or args.repo_id or args.dry_run or args.private or card_only:
            raise ValueError("--refresh-code REPO_ID takes no model folder or second repository, and no --dry-run, "
                             "--private, --output or license options: it rewrites the code of REPO_ID in place and "
                             "leaves its card as it is" + (f" (given: {', '.join(card_only)})" if card_only else ""))
        try:
            url = refresh_code(args.refresh_code, revision=args.revision, commit_message=args.commit_message)
        except PublishError as err:
            raise ValueError(str(err)) from err
        print(f"refreshed the code of {args.refresh_code}: {url}")
        return 0
    if not (args.model_dir and args.repo_id):
        raise ValueError("seqzoo publish needs MODEL_DIR and REPO_ID (or --refresh-code REPO_ID)")
    if args.dry_run != (args.output is not None):
        raise ValueError("--dry-run and --output go together: --dry-run --output DIR builds the repository "
                         "folder in DIR and uploads nothing")
    if args.dry_run:
        upload_only = [flag for flag, value in (("--private", args.private), ("--revision", args.revision),
                                                ("--commit-message", args.commit_message)) if value]
        if upload_only:
            raise ValueError(f"{', '.join(upload_only)} only apply to an upload; --dry-run uploads nothing")
        try:
            with quiet_transformers(bars_only=True):  # (no "Loading weights" bar for one small model)
                folder = export_folder(args.model_dir, args.output, repo_id=args.repo_id, **licensing)
        except OSError as err:  # a read-only folder, a full disk: one line, and nothing left at --output
            raise ValueError(describe(err)) from err
        files = sorted(path.name for path in folder.iterdir())
        print(f"built {folder} for {args.repo_id} ({len(files)} files, nothing uploaded): {', '.join(files)}")
        return 0
    try:
        url = publish(args.model_dir, args.repo_id, private=args.private or None, revision=args.revision,
                      commit_message=args.commit_message, **licensing)
    except PublishError as err:
        raise ValueError(str(err)) from err
    except OSError as err:  # the local staging folder could not be written
        raise ValueError(describe(err)) from err
    print(f"published {args.model_dir} to {args.repo_id}: {url}")
    return 0
