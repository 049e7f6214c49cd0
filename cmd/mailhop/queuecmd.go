package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/mailhop/mailhop/queue"
	"github.com/mailhop/mailhop/relay/admin"
)

const queueUsage = `Usage:
  mailhop queue list [--json] [--state S] [--domain D] [--sender S] [--rcpt R] [--min-age 1h]
  mailhop queue show [--json | --body] ID
  mailhop queue flush [--domain D]
  mailhop queue hold|release|delete|bounce ID...
Flags:
`

// cmdQueue runs `mailhop queue ...` against the running relay's admin
// socket. list and show also work while the relay is stopped: they then
// read the queue directory themselves.
func cmdQueue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFlag := fs.String("config", "", "configuration file")
	asJSON := fs.Bool("json", false, "print JSON (list, show)")
	bodyOnly := fs.Bool("body", false, "show: print only the message, byte for byte as queued")
	var f admin.Filter
	fs.Func("state", "list: only messages with a recipient in this state (pending, delivered, failed) or held", func(v string) error {
		s, err := admin.ParseState(v)
		f.State = s
		return err
	})
	fs.StringVar(&f.Domain, "domain", "", "list: only messages with a recipient in this domain; flush: only this domain")
	fs.StringVar(&f.Sender, "sender", "", "list: envelope sender contains this; '<>' (or MAILER-DAEMON): the null sender of bounces")
	fs.StringVar(&f.Rcpt, "rcpt", "", "list: a recipient contains this")
	fs.DurationVar(&f.MinAge, "min-age", 0, "list: queued at least this long")
	fs.Usage = func() {
		fmt.Fprint(stderr, queueUsage)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return flagsFailed(err)
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, "mailhop queue: need a subcommand: list, show, flush, hold, release, delete, bounce\n")
		return exitUsage
	}
	// Only data_dir and admin.socket are needed, read leniently: an
	// operator's shell lacks the service's password_env variables, and
	// may not read its key files.
	cfg, err := loadClientConfig(configPath(*cfgFlag))
	if err != nil {
		fmt.Fprintf(stderr, "mailhop queue: %v\n", err)
		return exitFail
	}
	c := admin.NewClient(cfg.Admin.Socket)
	sub, rest := pos[0], pos[1:]
	if (sub == "list" || sub == "flush") && len(rest) > 0 {
		fmt.Fprintf(stderr, "mailhop queue %s: unexpected argument %q (for one domain: --domain D)\n", sub, rest[0])
		return exitUsage
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "mailhop queue %s: %v\n", sub, err)
		return exitFail
	}
	// offline opens the queue directory when the relay is not running.
	offline := func() (*queue.Queue, error) {
		return queue.Open(filepath.Join(cfg.DataDir, "queue"), queue.Options{ReadOnly: true,
			Logger: slog.New(slog.NewTextHandler(stderr, nil))})
	}
	switch sub {
	case "list":
		// --json streams: a large queue is printed as it arrives, never
		// held whole; the table aligns its columns over every message.
		var msgs []admin.Message
		var out *admin.ArrayWriter
		var bw *bufio.Writer
		add := func(m admin.Message) error {
			if out != nil {
				return out.Add(m)
			}
			msgs = append(msgs, m)
			return nil
		}
		if *asJSON {
			bw = bufio.NewWriterSize(stdout, 64<<10)
			defer bw.Flush() // what was listed before a failure; checked below otherwise
			out = admin.NewArrayWriter(bw)
		}
		err := c.Each(f, add)
		if errors.Is(err, admin.ErrNotRunning) {
			q, oerr := offline()
			if oerr != nil {
				return fail(fmt.Errorf("%v; and reading the queue directory: %v", err, oerr))
			}
			now := time.Now()
			err = nil
			q.Each(func(e *queue.Envelope) bool {
				m := admin.FromEnvelope(e)
				if f.Match(&m, now) {
					err = add(m)
				}
				return err == nil
			})
			q.Close()
		}
		if err != nil {
			return fail(err)
		}
		if out != nil {
			// Up to 64 KiB, the whole list is still in bw: an error
			// writing stdout (a full disk) shows only when it is flushed.
			if err := out.Close(); err != nil {
				return fail(err)
			}
			if err := bw.Flush(); err != nil {
				return fail(err)
			}
			return exitOK
		}
		if len(msgs) == 0 && f != (admin.Filter{}) {
			// Not "queue is empty": other messages may be queued.
			fmt.Fprintln(stdout, "no queued message matches")
			return exitOK
		}
		printTable(stdout, msgs)
		return exitOK
	case "show":
		if len(rest) != 1 || *asJSON && *bodyOnly {
			fmt.Fprintln(stderr, "usage: mailhop queue show [--json | --body] ID")
			return exitUsage
		}
		id := rest[0]
		// The relay's copy when it runs, else the queue directory's.
		m, err := c.Show(id)
		content := c.Message
		if errors.Is(err, admin.ErrNotRunning) {
			q, oerr := offline()
			if oerr != nil {
				return fail(fmt.Errorf("%v; and reading the queue directory: %v", err, oerr))
			}
			defer q.Close()
			var e *queue.Envelope
			if e, err = q.Get(id); err == nil {
				mm := admin.FromEnvelope(e)
				m = &mm
			}
			content = func(id string, w io.Writer) error {
				b, err := q.Body(id)
				if err != nil {
					return err
				}
				defer b.Close()
				_, err = io.Copy(w, io.NewSectionReader(b, 0, b.Size()))
				return err
			}
		}
		if *bodyOnly {
			if err := content(id, stdout); err != nil {
				return fail(fmt.Errorf("%s: %w", id, err))
			}
			return exitOK
		}
		if err != nil {
			return fail(fmt.Errorf("%s: %w", id, err))
		}
		if *asJSON {
			return printJSON(stdout, m)
		}
		printDetail(stdout, m)
		// Then the message itself, as Postfix's postcat -q shows it, for
		// those who may read it. The envelope alone is not the message: a
		// content that cannot be read fails the command.
		fmt.Fprintln(stdout)
		if err := content(id, stdout); err != nil {
			return fail(fmt.Errorf("message content of %s: %w", id, err))
		}
		return exitOK
	case "flush":
		n, err := c.Flush(f.Domain)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "%d message(s) due now\n", n)
		return exitOK
	case "hold", "release", "delete", "bounce":
		if len(rest) == 0 {
			fmt.Fprintf(stderr, "usage: mailhop queue %s ID...\n", sub)
			return exitUsage
		}
		code := exitOK
		for _, id := range rest {
			if err := c.Action(id, sub); err != nil {
				fmt.Fprintf(stderr, "mailhop queue %s %s: %v\n", sub, id, err)
				code = exitFail
				continue
			}
			fmt.Fprintf(stdout, "%s: %s\n", id, pastTense[sub])
		}
		return code
	}
	fmt.Fprintf(stderr, "mailhop queue: unknown subcommand %q\n", sub)
	return exitUsage
}

var pastTense = map[string]string{"hold": "held", "release": "released", "delete": "deleted", "bounce": "bounced"}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return exitFail
	}
	return exitOK
}

// printTable prints messages for people: one line per message, its columns
// aligned over all messages, then one indented line per recipient with its
// state, address and last reply (recipient lines do not take part in the
// alignment, so a long reply does not widen the message columns).
func printTable(w io.Writer, msgs []admin.Message) {
	if len(msgs) == 0 {
		fmt.Fprintln(w, "queue is empty")
		return
	}
	const stamp = "2006-01-02 15:04:05"
	rows := [][]string{{"ID", "SIZE", "ARRIVED", "ATTEMPTS", "NEXT ATTEMPT", "SENDER"}}
	for _, m := range msgs {
		next := nextAttempt(&m, stamp)
		from := m.From
		if from == "" {
			from = "<>"
		}
		rows = append(rows, []string{m.ID, fmt.Sprint(m.Size), m.Arrived.Local().Format(stamp),
			fmt.Sprint(m.Attempts), next, from})
	}
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], len(cell))
		}
	}
	line := func(row []string) {
		var b strings.Builder
		for i, cell := range row {
			if i == len(row)-1 {
				b.WriteString(cell)
				break
			}
			fmt.Fprintf(&b, "%-*s  ", widths[i], cell)
		}
		fmt.Fprintln(w, b.String())
	}
	line(rows[0])
	for i, m := range msgs {
		line(rows[i+1])
		for _, r := range m.Recipients {
			fmt.Fprintf(w, "    %-9s  %s%s\n", r.State, r.Address, replyNote(r))
		}
	}
	fmt.Fprintf(w, "%d message(s)\n", len(msgs))
}

// nextAttempt is m's next attempt for people: its time, or what it
// waits for instead (a parked message's recorded time is in the past).
func nextAttempt(m *admin.Message, stamp string) string {
	switch {
	case m.Held:
		return "held"
	case m.Delivering:
		return "delivering now"
	case m.Parked:
		return "waiting for a slot"
	}
	return m.NextAttempt.Local().Format(stamp)
}

// printDetail prints one message's whole envelope, a field a line (as
// Postfix's postcat -e does), for `queue show`.
func printDetail(w io.Writer, m *admin.Message) {
	const stamp = "2006-01-02 15:04:05 -0700"
	from := m.From
	if from == "" {
		from = "<>"
	}
	next := nextAttempt(m, stamp)
	if m.Parked {
		next += " (when a connection to its domain frees: per_domain_concurrency)"
	}
	kv := [][2]string{
		{"id", m.ID}, {"sender", from}, {"arrived", m.Arrived.Local().Format(stamp)},
		{"size", fmt.Sprint(m.Size)}, {"client", m.Client}, {"helo", m.Helo}, {"user", m.User},
		{"body", m.BodyType}, {"smtputf8", fmt.Sprint(m.SMTPUTF8)}, {"requiretls", fmt.Sprint(m.RequireTLS)},
		{"ret", m.Ret}, {"envid", m.EnvID}, {"attempts", fmt.Sprint(m.Attempts)},
		{"next attempt", next}, {"last error", oneLine(m.LastError)},
	}
	for _, f := range kv {
		if f[1] != "" {
			fmt.Fprintf(w, "%-13s %s\n", f[0]+":", f[1])
		}
	}
	for _, r := range m.Recipients {
		fmt.Fprintf(w, "%-13s %s  %s", "recipient:", r.State, r.Address)
		if r.Notify != "" {
			fmt.Fprintf(w, "  NOTIFY=%s", r.Notify)
		}
		if r.ORCPT != "" {
			fmt.Fprintf(w, "  ORCPT=%s", r.ORCPT)
		}
		fmt.Fprintf(w, "%s\n", replyNote(r))
	}
}

// replyNote is a recipient's last reply as "  (550 5.1.1 text)", without a
// code when it had none (a DNS or connection error), or "".
func replyNote(r admin.Recipient) string {
	reply := r.Reply
	if r.Code != 0 {
		reply = fmt.Sprintf("%d %s", r.Code, r.Reply)
	}
	if reply = oneLine(strings.TrimSpace(reply)); reply == "" {
		return ""
	}
	return "  (" + reply + ")"
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}
