package admin

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// A list the relay cut short (it stopped mid-way) is an error that says
// so, once: it was "queue list: unexpected EOF", under the CLI's own
// "mailhop queue list:" prefix. What came before the cut is passed on.
func TestClientEach_CutShort(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Read(make([]byte, 4096))
		body := "[\n  {\"id\": \"A1\"},\n  {\"id\": \"A"
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(body), body)
	}()
	var ids []string
	err = NewClient(sock).Each(Filter{}, func(m Message) error {
		ids = append(ids, m.ID)
		return nil
	})
	if err == nil || strings.Contains(err.Error(), "queue list") || !strings.Contains(err.Error(), "cut short") {
		t.Errorf("error %v, want one saying the list was cut short, without a \"queue list\" of its own", err)
	}
	if strings.Join(ids, " ") != "A1" {
		t.Errorf("messages %v, want A1", ids)
	}
}
