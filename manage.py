#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    if sys.argv[1:2] == ["runserver"]:
        # A server: refuse with one line when serving is unsafe (project.startup).
        from project.startup import serve_or_exit

        serve_or_exit()
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
