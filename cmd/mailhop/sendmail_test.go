package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseSendmailArgs(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want sendmailOpts
	}{
		{[]string{"-t", "-i"}, sendmailOpts{extract: true, noDot: true}},
		{[]string{"-ti", "-oem", "-odi", "-oQ/var/spool", "-v"}, sendmailOpts{extract: true, noDot: true, verbose: true}},
		{[]string{"-oi", "-f", "cron@x.test", "-F", "Cron Daemon", "a@b.test"},
			sendmailOpts{noDot: true, from: "cron@x.test", fromSet: true, fullName: "Cron Daemon", rcpts: []string{"a@b.test"}}},
		{[]string{"-fme@x.test", "-FMe", "-C", "/c.toml", "a@b.test", "--config", "/d.toml"},
			sendmailOpts{from: "me@x.test", fromSet: true, fullName: "Me", config: "/d.toml", rcpts: []string{"a@b.test"}}},
		{[]string{"-it", "-B", "8BITMIME", "-N", "never", "-bm", "--", "-odd@b.test"},
			sendmailOpts{extract: true, noDot: true, rcpts: []string{"-odd@b.test"}}},
		{[]string{"-r", "<>", "x@y.test"}, sendmailOpts{from: "<>", fromSet: true, rcpts: []string{"x@y.test"}}},
	}
	for _, c := range cases {
		got, err := parseSendmailArgs(c.args)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if !reflect.DeepEqual(*got, c.want) {
			t.Errorf("%q = %+v, want %+v", c.args, *got, c.want)
		}
	}
	for _, bad := range [][]string{{"-bs"}, {"-bp"}, {"-q"}, {"-f"}, {"-Z"}, {"--frobnicate"}} {
		_, err := parseSendmailArgs(bad)
		se, ok := err.(*sendmailErr)
		if !ok || se.code != exUsage {
			t.Errorf("%q: err = %v, want EX_USAGE", bad, err)
		}
	}
}

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
	for _, w := range []string{"From: root\n", "Date: Wed, 04 Mar 2026 05:06:07 +0000\n", "Message-ID: <20260304050607.", "@h.test>\n", "\n\nbody\n"} {
		if !strings.Contains(s, w) {
			t.Errorf("output lacks %q:\n%s", w, s)
		}
	}
	// (A Bcc field, not the letters: the random Message-ID may hold "bcc".)
	if l := "\n" + strings.ToLower(s); strings.Contains(l, "\nbcc:") || strings.Contains(s, "secret@") {
		t.Errorf("Bcc not removed:\n%s", s)
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
