// Package dsn builds and parses delivery status notifications (RFC 3464,
// RFC 6522 multipart/report; the global types of RFC 6533 for SMTPUTF8
// mail). Build writes the report the relay sends about some recipients of
// a message (failed, delayed, or relayed to a server without DSN), as
// Postfix writes its own: a readable explanation, the machine-readable
// message/delivery-status part and the original's header or, for a failure
// report with RET=FULL, the whole original, streamed from the queue. Parse
// reads one back and checks its required fields (the tests, and anything
// that has to read a report).
//
// When a report is due and how it is queued with the attempt's outcome is
// the delivery agent's business (relay/outbound); this package only writes
// and reads the message.
package dsn
