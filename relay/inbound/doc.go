// Package inbound is mailhop's SMTP server: the face of the relay that mail
// clients and applications hand mail to. It is built on go-smtp (the
// patched copy in third_party/go-smtp, see its MAILHOP-PATCHES.md).
//
// A connection goes through these steps:
//
//  1. Accept (limits.go): an address blocked after too many failed AUTHs,
//     or over max_connections / max_connections_per_ip, gets
//     "421 4.7.0" and is closed before any SMTP. The session timeout caps
//     every read deadline from then on.
//  2. Greeting and EHLO: PIPELINING, 8BITMIME, SMTPUTF8, SIZE,
//     ENHANCEDSTATUSCODES, CHUNKING, DSN; STARTTLS until TLS is on; AUTH
//     PLAIN LOGIN only once TLS is on (RFC 4954 §4, RFC 8314).
//  3. AUTH (auth.go): bcrypt, the same time for unknown users; failures are
//     counted per client address, slowed down, then 421 and a block.
//  4. MAIL (session.go): "submission" and "submissions" listeners require
//     AUTH (530 5.7.0); the sender is parsed strictly (addr.go, 501 5.1.3)
//     and bound to the user's senders (553 5.7.1).
//  5. RCPT: every recipient is remote, so it is accepted only from an
//     authenticated user or a trusted network (554 5.7.1 otherwise);
//     policy.max_recipients (452 4.5.3); duplicates are stored once.
//  6. DATA or BDAT (message.go): the data streams into queue.Enqueue behind
//     a Received field (and Message-ID/Date on submission listeners when
//     missing). go-smtp refuses bare CR/LF (550 5.6.11), over-long lines
//     (500 5.5.2) and over-size data (552 5.3.4) after reading to the end
//     of the data, so the queue aborts the message. The 250 is sent only
//     when Enqueue returned nil, i.e. the message is on stable storage; a
//     queue failure is answered 451 4.3.0 with the cause only in the log.
//
// Every transaction is logged once ("message accepted" or "message
// refused", keys queue_id, client, user, from, rcpts, size, tls, code,
// reply), every refused MAIL or RCPT once with its reason; passwords and
// the AUTH exchange never are.
package inbound
