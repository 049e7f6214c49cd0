package smtp

// mailhop patch tests of the client, against scripted servers on real
// loopback sockets.

import (
	"bufio"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
)

// scriptServer listens on 127.0.0.1, greets with greeting, answers each
// command line with the reply replies gives for its verb ("" closes the
// connection), and records the lines it got.
type scriptServer struct {
	ln   net.Listener
	mu   sync.Mutex
	got  []string
	done chan struct{}
}

func newScriptServer(t *testing.T, greeting string, replies map[string]string) *scriptServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptServer{ln: ln, done: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		defer close(s.done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, greeting)
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, strings.TrimRight(line, "\r\n"))
			s.mu.Unlock()
			verb := strings.ToUpper(strings.Fields(line + " x")[0])
			rep, ok := replies[verb]
			if !ok {
				rep = "502 5.5.1 not here\r\n"
			}
			if rep == "" {
				return
			}
			io.WriteString(c, rep)
		}
	}()
	return s
}

func (s *scriptServer) dial(t *testing.T) *Client {
	t.Helper()
	conn, err := net.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c
}

// lines waits for the server's connection to end and returns what it got.
func (s *scriptServer) lines() []string {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

func TestClientGreetingAndHelloReply(t *testing.T) {
	s := newScriptServer(t, "220-mx.example.org ESMTP\r\n220 second line\r\n", map[string]string{
		"EHLO": "250-mx.example.org Hello client.test\r\n250 PIPELINING\r\n",
		"QUIT": "221 bye\r\n",
	})
	c := s.dial(t)
	if c.Greeting() != "" || c.HelloReply() != "" {
		t.Error("greeting known before it was read")
	}
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if g := c.Greeting(); g != "mx.example.org ESMTP\nsecond line" {
		t.Errorf("Greeting() = %q", g)
	}
	if h := c.HelloReply(); h != "mx.example.org Hello client.test" {
		t.Errorf("HelloReply() = %q", h)
	}
	c.Quit()
}

func TestClientHelloReplyAfterHELO(t *testing.T) {
	s := newScriptServer(t, "220 mx ESMTP\r\n", map[string]string{
		"EHLO": "502 5.5.1 no\r\n",
		"HELO": "250 old.example.org greets client.test\r\n",
		"QUIT": "221 bye\r\n",
	})
	c := s.dial(t)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if h := c.HelloReply(); h != "old.example.org greets client.test" {
		t.Errorf("HelloReply() = %q", h)
	}
	c.Quit()
}

// After a failed AUTH (535) the exchange is over: the next line the server
// sees is the client's next command, not "*" (RFC 4954 §4).
func TestClientAuthFailedSendsNoCancel(t *testing.T) {
	s := newScriptServer(t, "220 mx ESMTP\r\n", map[string]string{
		"EHLO": "250-mx Hello\r\n250 AUTH PLAIN\r\n",
		"AUTH": "535 5.7.8 Authentication credentials invalid\r\n",
		"QUIT": "221 bye\r\n",
	})
	c := s.dial(t)
	err := c.Auth(sasl.NewPlainClient("", "user", "wrong"))
	var se *SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("Auth = %v, want the 535", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("Quit after the failed AUTH: %v", err)
	}
	want := []string{"EHLO localhost", "AUTH PLAIN AHVzZXIAd3Jvbmc=", "QUIT"}
	if got := s.lines(); !reflect.DeepEqual(got, want) {
		t.Errorf("server got %q, want %q", got, want)
	}
}

// A challenge the client cannot answer is cancelled with "*".
func TestClientAuthBadChallengeCancelled(t *testing.T) {
	s := newScriptServer(t, "220 mx ESMTP\r\n", map[string]string{
		"EHLO": "250-mx Hello\r\n250 AUTH LOGIN\r\n",
		"AUTH": "334 not base64!\r\n",
		"*":    "501 5.7.0 cancelled\r\n",
		"QUIT": "221 bye\r\n",
	})
	c := s.dial(t)
	if err := c.Auth(sasl.NewLoginClient("user", "pw")); err == nil {
		t.Fatal("Auth succeeded")
	}
	c.Quit()
	want := []string{"EHLO localhost", "AUTH LOGIN dXNlcg==", "*", "QUIT"}
	if got := s.lines(); !reflect.DeepEqual(got, want) {
		t.Errorf("server got %q, want %q", got, want)
	}
}

// A connection lost in the middle of AUTH is a network error, not a reply:
// the caller must not take it for the server's answer.
func TestClientAuthConnectionLostIsNotAReply(t *testing.T) {
	s := newScriptServer(t, "220 mx ESMTP\r\n", map[string]string{
		"EHLO": "250-mx Hello\r\n250 AUTH LOGIN\r\n",
		"AUTH": "334 UGFzc3dvcmQ6\r\n",
		"CHC=": "", // the password ("pw"): the server hangs up
	})
	c := s.dial(t)
	err := c.Auth(sasl.NewLoginClient("user", "pw"))
	var se *SMTPError
	if err == nil || errors.As(err, &se) {
		t.Fatalf("Auth = %#v, want the network error", err)
	}
}

// A server that refuses the session in its greeting (554) waits for QUIT
// (RFC 5321 §3.1); one that says 421 closes by itself and gets nothing.
func TestClientRefusingGreetingGetsQuit(t *testing.T) {
	for _, tc := range []struct {
		greeting string
		want     []string
	}{
		{"554 5.7.1 mx.example.org no service for you\r\n", []string{"QUIT"}},
		{"421 4.3.2 mx.example.org busy\r\n", nil},
	} {
		s := newScriptServer(t, tc.greeting, map[string]string{"QUIT": "221 bye\r\n"})
		c := s.dial(t)
		err := c.Hello("client.test")
		var se *SMTPError
		if !errors.As(err, &se) || se.Code != int(tc.greeting[0]-'0')*100+int(tc.greeting[1]-'0')*10+int(tc.greeting[2]-'0') {
			t.Fatalf("Hello = %v", err)
		}
		if tc.want == nil {
			c.Close() // the script server waits for the client to go
		}
		if got := s.lines(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("after %q the server got %q, want %q", tc.greeting, got, tc.want)
		}
	}
}
