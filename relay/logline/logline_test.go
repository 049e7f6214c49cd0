package logline

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestInfoHonoursLevelAndAttrs(t *testing.T) {
	var out bytes.Buffer
	lv := new(slog.LevelVar)
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: lv})).With("client", "192.0.2.1")
	Info(log, "message accepted", slog.String("queue_id", "Q1"), slog.Int("code", 250))
	if l := out.String(); !strings.Contains(l, `msg="message accepted" client=192.0.2.1 queue_id=Q1 code=250`) {
		t.Fatalf("line %q lacks the logger's and the call's attributes", l)
	}
	out.Reset()
	lv.Set(slog.LevelWarn)
	Info(log, "quiet")
	if out.Len() != 0 {
		t.Fatalf("logged %q above the level", out.String())
	}
}
