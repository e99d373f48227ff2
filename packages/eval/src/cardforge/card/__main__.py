"""Run as: python -m cardforge.card [hydra overrides] [card.parent_run_id=RUN]   (make card ARGS="...")
       python -m cardforge.card release [hydra overrides] [release.dry_run=true]   (make release ARGS="...")"""

import sys

from cardforge.core.cli import stage_main


def main() -> None:
    if sys.argv[1:2] == ["release"]:  # the release bundle: conf/release.yaml, cardforge.card.release
        from cardforge.card.release import run as release

        del sys.argv[1]
        stage_main("release", release)
        return
    from cardforge.card.stage import run

    stage_main("card", run)


if __name__ == "__main__":
    main()
