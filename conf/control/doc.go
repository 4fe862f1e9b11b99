// Package control is gopasta's control socket (-c/--conf-path, "control"
// in TOML): upstream pasta's configuration protocol, which the pesto
// client speaks to list and change forwarding rules at run time, and a
// door from it into gopasta's native protocol.
//
// # Theory of operation
//
// The daemon keeps its forwarding rules as pasta keeps them: one table per
// interface ("pif") that listens, HOST for -t and -u and, in pasta mode,
// SPLICE for -T and -U. A table is a list of Rule, which is struct
// fwd_rule: a protocol, a listening address (or dual stack), an interface,
// a port range, the target port (and address), and the flags weak
// (unbindable ports are skipped) and scan ("auto"). ConfigTables builds
// the tables from the command line exactly as pasta's option parser does,
// so that pesto lists the same text for both and can delete a rule by
// sending back its bytes.
//
// A session (one connection) goes:
//
//	server: hello     "basil:s\0", u32 version 2, u32 128, u32 16
//	server: tables    { u8 pif, char name[128], u32 caps, u32 count,
//	                    count x rule (56 bytes) } ..., u8 0
//	client: update    { u8 pif, u32 count, count x rule } ..., u8 0
//	        or        u8 0xFF: the rest of the stream is the native
//	                  protocol (ServeNative, another file of this package)
//	        or        nothing: a client that only lists hangs up
//	server: status    "warning: ..." lines, then "ok" or "error: ..."
//
// All integers are big-endian. pesto reads nothing after its update and
// hangs up; the status lines are gopasta's addition for its own client
// (Client.Replace), which would otherwise never learn that a port it asked
// for is bound by another program. pesto does all parsing and editing
// itself and sends whole tables: the server replaces each table it
// receives (a table not sent keeps its rules), after validating every
// rule as pasta does (Table.Add: capabilities, port ranges, flags,
// conflicts). A malformed or refused update changes nothing: the client
// gets an error line and the connection is closed; the daemon logs it and
// goes on.
//
// Applying tables (RulesBackend.Apply) diffs them against the listeners open:
// a listener serving the same address, port and target under the new
// rules is kept, so connections and UDP flows through it see nothing;
// listeners no rule wants are closed, new ones opened. Connections
// already accepted are never touched by a rule change. A port that cannot
// be bound is reported (pasta's "Listen failed for HOST TCP port */8080:
// Address already in use") while the other rules take effect, where pasta
// stops at the first failure and leaves the rest of its tables unbound.
//
// # Safety
//
// The socket file is created with mode 0600 (the umask is narrowed around
// bind(2), so it never exists with a wider one) and every client's
// SO_PEERCRED is checked: a client of another uid than the daemon's
// effective one is closed without a byte. Every message has a bound: at
// most three tables of MaxRules rules of 56 bytes, so an update is at most
// about 43 KiB and is read through a limit; a session must finish within
// sessionTimeout; at most maxConns clients are connected at once. pesto
// sessions are serialised, as in pasta, so that two editors never
// interleave their read-modify-write of a table. Parsers never panic on
// any input (FuzzReadUpdate, FuzzReadTables, FuzzEdit).
//
// # Clients
//
// Dial connects and reads the hello and the tables; Client.Replace sends
// new tables and reads the verdict; Client.Native switches the connection
// to the native protocol. Table.Edit applies one pesto-style command (-t
// SPEC with add or delete) to a table, with the same parser and the same
// errors as pesto, so "gopasta ctl SOCKET rules add -t 8080" and "pesto
// -A -t 8080 SOCKET" send the same bytes.
package control
