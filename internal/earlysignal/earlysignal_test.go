package earlysignal

import (
	"path/filepath"
	"testing"
)

// TestIsServe: only `mailhop serve` catches the signals from init; the
// other commands, and the sendmail names whatever their arguments, keep
// the default (a SIGTERM ends them).
func TestIsServe(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"/usr/bin/mailhop", "serve", "--config", "x"}, true},
		{[]string{"mailhop", "serve"}, true},
		{[]string{"mailhop"}, false},
		{[]string{"mailhop", "queue", "list"}, false},
		{[]string{"mailhop", "sendmail", "serve"}, false},
		{[]string{"/usr/sbin/sendmail", "serve"}, false},
		{[]string{"mailq", "serve"}, false},
		{[]string{"newaliases", "serve"}, false},
		{nil, false},
	} {
		if got := isServe(c.args); got != c.want {
			t.Errorf("isServe(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}

// TestBase: base is filepath.Base for a program's path, which run's
// dispatch reads with filepath.Base.
func TestBase(t *testing.T) {
	for _, p := range []string{"", "/", "//", "mailhop", "/usr/sbin/sendmail", "./mailq", "a//newaliases", "/usr/bin/mailhop/", "x/"} {
		if got, want := base(p), filepath.Base(p); got != want && !(p == "" && got == "") {
			t.Errorf("base(%q) = %q, filepath.Base %q", p, got, want)
		}
	}
}
