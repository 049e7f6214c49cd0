// Package outbound is mailhop's delivery agent: the half of the relay that
// becomes an SMTP client. It takes due messages from the queue, finds where
// each recipient's domain takes mail, delivers over SMTP and reports every
// recipient's outcome back to the queue, which owns state and time.
//
// # One attempt
//
//  1. Agent.Run takes a due message from queue.Next (at most
//     delivery.concurrency messages are in flight).
//  2. The stored header block is read; more than 50 Received fields is a
//     mail loop: every pending recipient fails with 5.4.6 (RFC 5321 §6.3).
//  3. Pending recipients are grouped by domain (lower-cased, international
//     names as A-labels, which routes, TLS policy, MTA-STS, DANE and TLS
//     reports are then all looked up by: asciiDomain). The groups of
//     one message are delivered in parallel, each holding one slot of
//     delivery.per_domain_concurrency for its domain and one of
//     delivery.concurrency in total.
//  4. A group's destinations: the [[route]] for its domain (its smarthosts,
//     in order), else the domain's MX hosts from dnsmx (in order, implicit MX
//     included) at delivery.mx_port. Each host's addresses are tried in turn
//     until one answers; a refused or dropped connection, a timeout, a
//     failed greeting (a refusing one, 554, is answered with QUIT first,
//     RFC 5321 §3.1) or EHLO, a 421 reply before DATA, a failed STARTTLS
//     demanded by a route, or failed AUTH moves on to the next address.
//  5. On the connection: EHLO with the configured hostname; STARTTLS as
//     the TLS policy says (below; MX at level may: when offered, no
//     certificate check, and a failed handshake is retried in plain text
//     on a new connection and remembered for the host); AUTH PLAIN (or
//     LOGIN, when that is all the smarthost offers: our loginClient, which
//     ignores the words of its challenges) for routes with credentials,
//     only over TLS; then MAIL
//     (SIZE, BODY, SMTPUTF8, RET, ENVID), one RCPT per recipient (NOTIFY,
//     ORCPT) and DATA with the stored bytes — at most
//     delivery.max_recipients_per_transaction recipients per transaction,
//     the domain's others (and those a server refused as too many) in
//     further transactions on the same connection (Agent.transactions),
//     what each delivered recorded before the next. A connection whose transaction
//     ended cleanly (and did not have every recipient deferred) is kept for delivery.idle_conn_timeout and reused by the
//     next message to the same address, TLS mode and route (with RSET
//     first when the last transaction stopped before its end of data; not
//     when the server sent anything between transactions, a second reply
//     that would be read as the next MAIL's, or closed); at
//     most per_domain_concurrency are kept idle per such key, and idle
//     connections count toward delivery.concurrency: before a new one is
//     dialled, the longest idle are closed (QUIT) until those in use and
//     those idle fit within it. With
//     PIPELINING, RSET, MAIL, every RCPT and DATA go out in one write;
//     to a server that offers 8BITMIME, BODY=8BITMIME goes with mail
//     declared 8BITMIME (or BINARYMIME) or holding an octet above 127,
//     BODY=7BIT with the rest, as Postfix sends them. To a server without
//     8BITMIME no BODY goes, and a message holding 8-bit octets goes in a
//     7-bit form: its 8-bit body parts encoded as quoted-printable (RFC
//     6152 §3; relay/mime7bit).
//  6. The outcomes go back to the queue with queue.Done; when delivery was
//     cut short by shutdown and nothing changed, the message is given back
//     with queue.Requeue.
//
// # TLS policy
//
// Each domain group gets a TLS level: a route's tls key (starttls and tls:
// required and verified against the smarthost's name; none: plain), else
// the [[tls_policy]] entry listing the domain, else delivery.tls_policy
// (none, may, encrypt, verify, dane; config.TLSLevelFor). For MX delivery
// at every level but none, the domain's MTA-STS policy (RFC 8461) is found
// once per attempt (Options.MTASTS, by default an mtasts.Fetcher caching
// in data_dir/mta-sts). Then, per MX host:
//
//	DANE: dnssec_trusted_resolver, level may/encrypt/dane, TLSA with AD
//	  usable records (DANE-TA 2, DANE-EE 3)   TLS required, VerifyDANE
//	  records, none usable                    TLS required, unauthenticated
//	  lookup failed (SERVFAIL, timeout)       host skipped, 4.4.3
//	MTA-STS enforce: MX not in the policy     host skipped, 4.7.5
//	MTA-STS enforce: MX in the policy         TLS required, PKIX for the MX name
//	MTA-STS testing                           the level's own rules; failures
//	                                          logged and counted, never refused
//	level encrypt / verify                    TLS required / and PKIX
//	REQUIRETLS message (RFC 8689)             at least TLS with PKIX (or DANE),
//	                                          and the server must offer REQUIRETLS
//
// Certificates are always checked in tls.Config.VerifyConnection, so that
// the outcome (tls_verified in the attempt log) is known even where it is
// not enforced. A required TLS that fails skips the host with a 4.7.x
// error (never plain text); when no host is left the recipients stay
// Pending — except for a REQUIRETLS message whose every host failed for
// want of verified TLS or REQUIRETLS: it fails with 5.7.30, and its
// bounce (sent without REQUIRETLS) carries the header only (RFC 8689 §5).
// Each new connection is counted per policy domain (Agent.TLSResults) for
// TLS reporting (RFC 8460); the counts, the report and its delivery are
// relay/tlsrpt's, the daily run that sends them is tlsrpt_send.go's.
//
// # Failure classification
//
// Every recipient of an attempt ends in one of the queue's states:
//
//	reply/event                                         state      report
//	2xx to RCPT and to the end of DATA                  Delivered  success DSN if NOTIFY=SUCCESS
//	4xx to MAIL, RCPT, DATA                             Pending    -
//	refused/dropped connection, timeout, no host answered
//	temporary DNS failure (SERVFAIL, timeout; 4.4.3)    Pending    -
//	5xx to MAIL, RCPT, DATA                             Failed     bounce
//	NXDOMAIN (5.1.2), null MX (5.1.10), no MX host with
//	an address (5.4.4)                                  Failed     bounce
//	remote SIZE smaller than the message (5.3.4)        Failed     bounce
//	SMTPUTF8 message with a non-ASCII sender local part
//	or header, server without SMTPUTF8 (5.6.7)          Failed     bounce
//	  (only a non-ASCII recipient local part: that one;
//	  an otherwise ASCII message goes without the
//	  SMTPUTF8 parameter, its domains as A-labels)
//	8-bit message that cannot be made 7-bit, server
//	without 8BITMIME (5.6.3)                            Failed     bounce
//	more than 50 Received fields (5.4.6)                Failed     bounce
//	an MX host greets or answers EHLO with our hostname
//	  (5.4.6 "loops back to myself", RFC 5321 §5.1)     Failed     bounce
//	a smarthost does (4.4.6; the next one is tried)     Pending    -
//	required TLS missing or rejected (4.7.4, 4.7.5)     Pending    -
//	REQUIRETLS not possible with any host (5.7.30)      Failed     bounce (header only)
//	Pending, and older than delivery.max_queue_age      Failed     bounce (4.4.7, expired)
//	Pending, older than delivery.delay_warning          Pending    one "delayed" DSN
//
// Anything unknown is temporary: mail is retried, never dropped. When no
// host answered at all, the recipients stay Pending whatever the last
// connection-level reply was. The next attempt is due after the attempt
// count's entry of delivery.retry_intervals, as configured now (a reload
// applies from the next attempt on), jittered by ±10%; the queue keeps it.
// It is brought forward to the time the delay warning is due (when not yet
// sent) or the message expires, when that comes first.
//
// # What is durable when
//
// Every report an attempt calls for (bounce, expiry, delay warning with its
// DelayWarned flag, NOTIFY=SUCCESS, `queue bounce`, loop; the message is
// written by relay/dsn, when and to whom is decided here) is queued (from
// the null sender, to the original sender) in one atomic commit with the
// attempt's outcome, by queue.DoneWithReports: a crash at any moment keeps
// both or neither, so a report is never lost and never sent twice (a
// report queued while the original stayed pending was sent again at its
// next attempt). When the commit fails, the outcome is recorded without the
// reports: a failure report's recipients stay Pending and the next attempt
// tries again. No report is ever sent about a message from the null sender,
// nor for recipients with NOTIFY=NEVER.
package outbound
