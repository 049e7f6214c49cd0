package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
)

// TestConfigCommand_PositionalIsUsage: "mailhop check-config FILE" (the
// file without --config) is a usage error; it checked $MAILHOP_CONFIG (or
// /etc/mailhop/config.toml) instead and said that one was OK. serve the
// same: it would have run with another file.
func TestConfigCommand_PositionalIsUsage(t *testing.T) {
	good := writeConfig(t, "")
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("no_such_key = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{good, filepath.Join(t.TempDir(), "missing.toml")} {
		t.Setenv("MAILHOP_CONFIG", env)
		for _, cmd := range []string{"check-config", "serve"} {
			if cmd == "serve" && env == good {
				continue // it would run
			}
			var out, errs bytes.Buffer
			code := run([]string{"mailhop", cmd, bad}, strings.NewReader(""), &out, &errs)
			if code != exitUsage || !strings.Contains(errs.String(), "--config") || strings.Contains(out.String(), "OK") {
				t.Errorf("%s %s with MAILHOP_CONFIG=%s: exit %d, stdout %q, stderr %q; want 2 and a hint to --config",
					cmd, bad, env, code, out.String(), errs.String())
			}
		}
	}
}

// The relay runs one P more than Go's default (its time goes to system
// calls, which hold a P), unless GOMAXPROCS says otherwise.
func TestTuneRuntime_GOMAXPROCS(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	t.Setenv("GOMAXPROCS", "")
	t.Setenv("GOMEMLIMIT", "max") // no followLiveHeap in the test process
	tuneRuntime()
	if got := runtime.GOMAXPROCS(0); got != before+1 {
		t.Errorf("GOMAXPROCS %d after tuneRuntime, want %d", got, before+1)
	}
	runtime.GOMAXPROCS(before)
	t.Setenv("GOMAXPROCS", strconv.Itoa(before))
	tuneRuntime()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("GOMAXPROCS %d with the variable set, want %d", got, before)
	}
}

// The soft memory limit is twice the live heap within 80–192 MiB: a busy
// relay with a small heap stays well under 100 MiB, a queue of a million
// recipients keeps the 192 MiB it had.
func TestMemoryLimitFor(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int64
	}{
		{0, 80 << 20},
		{20 << 20, 80 << 20},
		{60 << 20, 120 << 20},
		{150 << 20, 192 << 20},
		{1 << 40, 192 << 20},
	} {
		if got := memoryLimitFor(c.live); got != c.want {
			t.Errorf("memoryLimitFor(%d MiB) = %d MiB, want %d MiB", c.live>>20, got>>20, c.want>>20)
		}
	}
}

// -h/--help prints a command's usage and exits 0 (it exited 2, as for a
// wrong flag, which stays 2).
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{
		{"queue", "--help"}, {"passwd", "-h"}, {"dkim", "keygen", "--help"},
		{"check-config", "--help"}, {"serve", "-h"}, {"sendmail", "--help"},
	} {
		var out, errs bytes.Buffer
		code := run(append([]string{"mailhop"}, args...), strings.NewReader(""), &out, &errs)
		if code != exitOK || !strings.Contains(errs.String()+out.String(), "-") {
			t.Errorf("%v: exit %d, output %q; want 0 and the usage", args, code, errs.String()+out.String())
		}
	}
	var out, errs bytes.Buffer
	if code := run([]string{"mailhop", "queue", "--bogus"}, strings.NewReader(""), &out, &errs); code != exitUsage {
		t.Errorf("queue --bogus: exit %d, want %d", code, exitUsage)
	}
}

// queue --help names the subcommands, not only the flags they share.
func TestQueueHelpNamesSubcommands(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run([]string{"mailhop", "queue", "list", "--help"}, strings.NewReader(""), &out, &errs); code != exitOK {
		t.Fatalf("queue list --help: exit %d", code)
	}
	for _, sub := range []string{"queue list", "queue show", "queue flush", "hold|release|delete|bounce ID", "-min-age"} {
		if !strings.Contains(errs.String(), sub) {
			t.Errorf("queue list --help does not name %q:\n%s", sub, errs.String())
		}
	}
}
