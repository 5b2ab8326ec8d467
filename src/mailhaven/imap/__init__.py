"""IMAP4rev1 server (RFC 3501) on 143 (STARTTLS) and 993 (implicit TLS), with IDLE (RFC 2177),
UIDPLUS (RFC 4315), MOVE (RFC 6851), LITERAL+ (RFC 7888), SPECIAL-USE (RFC 6154), NAMESPACE (RFC 2342),
ID (RFC 2971), ENABLE (RFC 5161), UNSELECT (RFC 3691), CHILDREN (RFC 3348), SASL-IR (RFC 4959),
CONDSTORE/QRESYNC (RFC 7162), ESEARCH (RFC 4731), SEARCHRES (RFC 5182), WITHIN (RFC 5032) and
SORT, SORT=DISPLAY, ESORT, THREAD=ORDEREDSUBJECT, THREAD=REFERENCES (RFC 5256, RFC 5957, RFC 5267 §3),
CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4: RETURN (PARTIAL), RETURN (UPDATE), CANCELUPDATE).

Owns: the IMAP protocol over the store: a sans-IO core and a thin asyncio shell.
Does not own: storage, flags on disk and change events (store/), passwords (auth/), connection
counting and login throttling (limits.py), TLS contexts (tls.py), MIME parsing (message/mime.py).

Modules (one owner each):
    framing.py      bytes -> complete commands (lines + literals), "+" continuations, size limits
    parser.py       a framed command -> typed `commands.py` dataclass, or ParseError (-> BAD)
    commands.py     the command dataclasses; seqset.py sequence sets; utf7.py modified UTF-7
    encode.py       quoted/literal/astring encoding; fetchitems.py ENVELOPE, BODYSTRUCTURE, BODY[...]
    search.py       SEARCH key evaluation; searchadapt.py runs it over a selected mailbox
    sort.py         SORT keys (base subject, addresses, sent date) and the order
    context.py      updating searches and sorts (RFC 5267 §4.3): what is kept, the ADDTO/REMOVEFROM lines
    thread.py       THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256) and the thread list
    fetch.py        FETCH rendering (`* n FETCH (...)` lines); msgcache.py the process-wide cache
                    of ENVELOPE/BODYSTRUCTURE/header blocks; listing.py LIST/LSUB matching and lines
    state.py        State enum + allowed commands per state
    view.py         a session's sequence numbers and pending EXPUNGE/EXISTS/FETCH (pure)
    selected.py     the selected mailbox, and the reads FETCH and SEARCH share
    session.py      the sans-IO core: client bytes in (framing + parser), response bytes and
                    events out; one cmd_<verb> method per command; replies; \\Recent; IDLE
    server.py       asyncio shell: sockets, STARTTLS, limits, timeouts, BYE; `create_server`

Entry point (app.py's listener factory contract):
    await mailhaven.imap.server.create_server(ctx, name, listener_config, sock) -> asyncio.AbstractServer
ctx provides config, store, directory, limits, tls, and optionally sessions and stopping.
"""
