package sendmail

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReadMessage_DotEndsUnlessI(t *testing.T) {
	t.Parallel()
	in := "Subject: x\n\nline\n.\nafter\n"
	got, err := readMessage(strings.NewReader(in), true, 1<<20)
	if err != nil || string(got) != "Subject: x\n\nline\n" {
		t.Errorf("without -i: %q, %v", got, err)
	}
	got, err = readMessage(strings.NewReader(in), false, 1<<20)
	if err != nil || string(got) != in {
		t.Errorf("with -i: %q, %v", got, err)
	}
	if _, err := readMessage(strings.NewReader(strings.Repeat("x", 100)), false, 10); err == nil {
		t.Error("over the size limit: no error")
	}
}

func TestRewriteHeaders_CronMessage(t *testing.T) {
	t.Parallel()
	msg := "From: root\nTo: ops@example.com, root\nCc: \"Dev Team\" <dev@example.net>\nBcc: hidden@example.org,\n secret@example.org\nSubject: Cron <root@host> run-parts\n\nbody\n"
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	out, rcpts, err := rewriteHeaders([]byte(msg), true, headerFields{from: "root@h.test", hostname: "h.test", now: now})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ops@example.com", "root@h.test", "dev@example.net", "hidden@example.org", "secret@example.org"}
	if !reflect.DeepEqual(rcpts, want) {
		t.Errorf("rcpts = %q, want %q", rcpts, want)
	}
	s := string(out)
	for _, w := range []string{"From: root@h.test\n", "To: ops@example.com, root@h.test\n", "Date: Wed, 04 Mar 2026 05:06:07 +0000\n", "Message-ID: <20260304050607.", "@h.test>\n", "\n\nbody\n"} {
		if !strings.Contains(s, w) {
			t.Errorf("output lacks %q:\n%s", w, s)
		}
	}
	// (A Bcc field, not the letters: the random Message-ID may hold "bcc".)
	if l := "\n" + strings.ToLower(s); strings.Contains(l, "\nbcc:") || strings.Contains(s, "secret@") {
		t.Errorf("Bcc not removed:\n%s", s)
	}
}

// TestQualifyAddrs: addresses without a domain in the address fields of
// local mail get @hostname, as Postfix's cleanup appends $myorigin to them;
// a From without a domain is not RFC 5322 and receivers refuse it.
func TestQualifyAddrs(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want string }{
		{"From: root\n", "From: root@h.test\n"},
		{"From: root (Cron Daemon)\n", "From: root@h.test (Cron Daemon)\n"},
		{"From: (Cron Daemon) root\n", "From: (Cron Daemon) root@h.test\n"},
		{"From: Cron Daemon <root>\n", "From: Cron Daemon <root@h.test>\n"},
		{"To: ops@example.com, root,\n\tadmin\n", "To: ops@example.com, root@h.test,\n\tadmin@h.test\n"},
		{"To: \"Dev, Team\" <dev@example.net>, \"a@b\" <www-data>\n", "To: \"Dev, Team\" <dev@example.net>, \"a@b\" <www-data@h.test>\n"},
		{"Cc: team: a, b@example.com;, undisclosed-recipients:;\n", "Cc: team: a@h.test, b@example.com;, undisclosed-recipients:;\n"},
		{"Reply-To: <>\n", "Reply-To: <>\n"},
		{"To: John Smith\n", "To: John Smith\n"},
		{"From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.com>\n", "From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.com>\n"},
		{"From: a.b (x, y) \n", "From: a.b@h.test (x, y) \n"},
	} {
		name := c.in[:strings.IndexByte(c.in, ':')]
		if got := string(qualifyAddrs([]byte(c.in), len(name)+1, "h.test")); got != c.want {
			t.Errorf("qualifyAddrs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	// -t reads a local name with a comment, qualified first.
	_, rcpts, err := rewriteHeaders([]byte("To: root (admin), Ops <ops@example.com>\nBcc: backup (tape)\n\nx\n"), true, headerFields{from: "root@h.test", hostname: "h.test", now: time.Now()})
	if want := []string{"root@h.test", "ops@example.com", "backup@h.test"}; err != nil || !reflect.DeepEqual(rcpts, want) {
		t.Errorf("-t: rcpts = %q, %v; want %q", rcpts, err, want)
	}
	// Subject and other fields are not address lists.
	out, _, err := rewriteHeaders([]byte("Subject: root\nFrom: root\n\nroot\n"), false, headerFields{from: "root@h.test", hostname: "h.test", now: time.Now()})
	if err != nil || !strings.HasPrefix(string(out), "Subject: root\nFrom: root@h.test\n") || !strings.HasSuffix(string(out), "\n\nroot\n") {
		t.Errorf("rewriteHeaders: %q, %v", out, err)
	}
}

// TestRewriteHeaders_Resent: a resent message (RFC 5322 §3.6.6) goes with -t
// to its Resent- recipients only, and Resent-Bcc is removed like Bcc.
func TestRewriteHeaders_Resent(t *testing.T) {
	t.Parallel()
	msg := "From: a@example.com\nTo: original@example.com\nBcc: old-bcc@example.com\nResent-From: b@example.com\nResent-To: new@example.net\nResent-Bcc: hidden@example.org\nSubject: fwd\n\nbody\n"
	out, rcpts, err := rewriteHeaders([]byte(msg), true, headerFields{from: "b@h.test", hostname: "h.test", now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"new@example.net", "hidden@example.org"}; !reflect.DeepEqual(rcpts, want) {
		t.Errorf("rcpts = %q, want %q", rcpts, want)
	}
	s := string(out)
	if strings.Contains(s, "hidden@") || strings.Contains(s, "old-bcc@") || !strings.Contains(s, "To: original@example.com\n") {
		t.Errorf("Resent-Bcc or Bcc kept, or To lost:\n%s", s)
	}
	// The resent block gets its Resent-Date and Resent-Message-ID; the
	// original's fields are not made up.
	if !strings.Contains(s, "\nResent-Date: ") || !strings.Contains(s, "\nResent-Message-ID: <") ||
		strings.Contains(s, "\nDate: ") || strings.Contains(s, "\nMessage-ID: ") {
		t.Errorf("resent fields:\n%s", s)
	}
}

func TestRewriteHeaders_NoHeaderGetsFromWithFullName(t *testing.T) {
	t.Parallel()
	out, rcpts, err := rewriteHeaders([]byte("just a line\n"), false, headerFields{from: "app@h.test", fullName: "The App", hostname: "h.test", now: time.Now()})
	if err != nil || rcpts != nil {
		t.Fatal(err, rcpts)
	}
	s := string(out)
	if !strings.HasPrefix(s, "From: \"The App\" <app@h.test>\n") || !strings.HasSuffix(s, "\n\njust a line\n") {
		t.Errorf("out = %q", s)
	}
}

// TestRewriteHeaders_EmptyHeader: a message that starts with the empty line
// (no fields) gets the added fields above it, and no second empty line.
func TestRewriteHeaders_EmptyHeader(t *testing.T) {
	t.Parallel()
	out, _, err := rewriteHeaders([]byte("\nbody\n"), false, headerFields{from: "app@h.test", hostname: "h.test", now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if s := string(out); !strings.HasPrefix(s, "From: app@h.test\n") || !strings.HasSuffix(s, ">\n\nbody\n") {
		t.Errorf("out = %q", s)
	}
}

// TestRewriteHeaders_BareCR reads the header with the line ends the relay
// queues: a CR alone ends a line there, so a Bcc field behind one is
// removed, and the fields sendmail adds go above the empty line that a CR
// before CRLF makes.
func TestRewriteHeaders_BareCR(t *testing.T) {
	t.Parallel()
	hf := headerFields{from: "app@h.test", hostname: "h.test", now: time.Now()}
	out, _, err := rewriteHeaders([]byte("From: a@h.test\nSubject: x\rBcc: hidden@example.org\nTo: b@example.net\n\nbody\n"), false, hf)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "hidden@") {
		t.Errorf("Bcc behind a bare CR was kept:\n%q", out)
	}
	out, _, err = rewriteHeaders([]byte("From: a@h.test\r\r\nSubject: twice converted\r\r\n\r\r\nbody\r\r\n"), false, hf)
	if err != nil {
		t.Fatal(err)
	}
	// The header as the relay reads it: CRLF and a CR alone end lines.
	queued := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(out))
	header, _, _ := strings.Cut(queued, "\n\n")
	if !strings.Contains(header, "\nDate: ") || !strings.Contains(header, "\nMessage-ID: ") {
		t.Errorf("added fields are not in the header the relay queues:\n%q", out)
	}
}

// TestRewriteHeaders_SpaceBeforeColon reads a field with white space
// before its colon (RFC 5322 §4.5.3's obsolete syntax) as a field, as the
// relay (mailhdr) and Postfix read it: a "Bcc :" field is removed, not
// left in the body for every recipient to see, and with -t its address
// and those of the fields after it get the message.
func TestRewriteHeaders_SpaceBeforeColon(t *testing.T) {
	t.Parallel()
	hf := headerFields{from: "app@h.test", hostname: "h.test", now: time.Now()}
	out, rcpts, err := rewriteHeaders([]byte("Subject: x\nBcc\t: hidden@example.org\nTo : b@example.net, root\n\nbody\n"), true, hf)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "hidden@") {
		t.Errorf("Bcc with a space before its colon was kept:\n%q", out)
	}
	if want := []string{"hidden@example.org", "b@example.net", "root@h.test"}; !reflect.DeepEqual(rcpts, want) {
		t.Errorf("rcpts = %q, want %q", rcpts, want)
	}
	if !strings.Contains(string(out), "\nTo : b@example.net, root@h.test\nFrom: app@h.test\n") || !strings.HasSuffix(string(out), ">\n\nbody\n") {
		t.Errorf("out = %q", out)
	}
}
