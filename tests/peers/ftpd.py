#!/usr/bin/env python3
"""A real FTP/FTPS server for dropsync's tests and benchmarks (pyftpdlib), on 127.0.0.1 only.

  ftpd.py --root DIR --port P --user U --password PW [--tls CERT KEY] [--throttle BYTES_PER_S]
          [--no-mlsd] [--no-epsv] [--no-delete] [--slow-logins SECONDS] [--log FILE]

--no-mlsd / --no-epsv remove those commands (and MLST from FEAT), as older servers lack them.
--slow-logins answers a login only after SECONDS while another session is logged in (as a
server that hashes passwords slowly, or throttles parallel logins, does).
--log records the transfer commands it served (RETR, REST, DELE, ...), one per line, and
"sessions N" at each login, N the sessions logged in then.
"""
import argparse
import logging

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, ThrottledDTPHandler
from pyftpdlib.servers import FTPServer

p = argparse.ArgumentParser()
p.add_argument("--root", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--user", default="calls")
p.add_argument("--password", default="secret")
p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
p.add_argument("--throttle", type=int, default=0)
p.add_argument("--no-mlsd", action="store_true")
p.add_argument("--no-epsv", action="store_true")
p.add_argument("--no-delete", action="store_true")
p.add_argument("--slow-logins", type=float, default=0)
p.add_argument("--log")
a = p.parse_args()

if a.tls:
    from pyftpdlib.handlers import TLS_FTPHandler, TLS_DTPHandler

    class Handler(TLS_FTPHandler):
        pass

    Handler.certfile, Handler.keyfile = a.tls
    Handler.tls_control_required = True
    Handler.tls_data_required = True
    dtp = TLS_DTPHandler
else:

    class Handler(FTPHandler):
        pass

    dtp = FTPHandler.dtp_handler

if a.throttle:
    class Throttled(ThrottledDTPHandler, dtp):
        write_limit = a.throttle
    dtp = Throttled
Handler.dtp_handler = dtp

drop = set()
if a.no_mlsd:
    drop |= {"MLSD", "MLST"}
if a.no_epsv:
    drop |= {"EPSV"}
Handler.proto_cmds = {k: v for k, v in Handler.proto_cmds.items() if k not in drop}

# Every logged-in session, so that --slow-logins can hold back a second one and the log can
# show how many were open at once.
live = set()
on_login, on_disconnect = Handler.on_login, Handler.on_disconnect


def logged_in(self, username):
    live.add(self)
    logging.info("sessions %d", len(live))
    on_login(self, username)


def gone(self):
    live.discard(self)
    on_disconnect(self)


Handler.on_login = logged_in
Handler.on_disconnect = gone

if a.slow_logins:
    answer = Handler.ftp_PASS

    def ftp_PASS(self, line):
        if not live:
            return answer(self, line)

        def later():
            if self.connected:
                answer(self, line)

        self.ioloop.call_later(a.slow_logins, later)

    Handler.ftp_PASS = ftp_PASS

auth = DummyAuthorizer()
auth.add_user(a.user, a.password, a.root, perm="elrafmwMT" if a.no_delete else "elradfmwMT")
Handler.authorizer = auth
Handler.passive_ports = None
Handler.permit_foreign_addresses = False
Handler.banner = "dropsync test ftpd ready"
Handler.log_cmds_list = ["RETR", "REST", "DELE", "STOR"]

if a.log:
    logging.basicConfig(filename=a.log, level=logging.INFO, format="%(message)s")
else:
    logging.basicConfig(level=logging.WARNING)

server = FTPServer(("127.0.0.1", a.port), Handler)
server.max_cons = 256
server.serve_forever(handle_exit=True)
