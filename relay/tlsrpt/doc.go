// Package tlsrpt is SMTP TLS reporting (RFC 8460): the counts of TLS
// sessions per policy domain and policy (Stats: successes, and failures by
// result type, host and address), kept across a restart in
// data_dir/tls-report-counts.json (SaveCounts, LoadCounts, Stats.Merge);
// the _smtp._tls TXT record that asks for reports (ParseRecord); the
// aggregate report's JSON (Build, §4) and, gzipped, its delivery (Report: an
// RFC 8460 §5.3 mail, Report.Message, or an https: POST, Report.Post).
//
// Which sessions are counted, when a period ends (NextPeriodEnd), the TXT
// lookup, queueing a mailed report with its DKIM signature, and the log
// lines are the delivery agent's business (relay/outbound); this package
// needs neither the agent nor the queue.
package tlsrpt
