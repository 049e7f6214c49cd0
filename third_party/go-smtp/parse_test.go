package smtp

import (
	"testing"
)

func TestParser(t *testing.T) {
	validReversePaths := []struct {
		raw, path, after string
	}{
		{"<>", "", ""},
		{"<root@nsa.gov>", "root@nsa.gov", ""},
		{"root@nsa.gov", "root@nsa.gov", ""},
		{"<root@nsa.gov> AUTH=asdf@example.org", "root@nsa.gov", " AUTH=asdf@example.org"},
		{"root@nsa.gov AUTH=asdf@example.org", "root@nsa.gov", " AUTH=asdf@example.org"},
	}
	for _, tc := range validReversePaths {
		p := parser{s: tc.raw}
		path, err := p.parseReversePath()
		if err != nil {
			t.Errorf("parser.parseReversePath(%q) = %v", tc.raw, err)
		} else if path != tc.path {
			t.Errorf("parser.parseReversePath(%q) = %q, want %q", tc.raw, path, tc.path)
		} else if p.s != tc.after {
			t.Errorf("parser.parseReversePath(%q): got after = %q, want %q", tc.raw, p.s, tc.after)
		}
	}

	invalidReversePaths := []string{
		"",
		" ",
		"asdf",
		"<Foo Bar <root@nsa.gov>>",
		" BODY=8BITMIME SIZE=12345",
		"a:b:c@example.org",
		"<root@nsa.gov",
	}
	for _, tc := range invalidReversePaths {
		p := parser{s: tc}
		if path, err := p.parseReversePath(); err == nil {
			t.Errorf("parser.parseReversePath(%q) = %q, want error", tc, path)
		}
	}
}

// httpRequest finds the first line of an HTTP request, and only that, and
// costs an SMTP command line no allocation: it runs for every command.
func TestHTTPRequestLine(t *testing.T) {
	for line, want := range map[string]string{
		"GET / HTTP/1.1":                       "GET",
		"post /form HTTP/1.0":                  "POST",
		"CONNECT mx.example:25":                "CONNECT",
		"GET":                                  "GET",
		"OPTIONS * HTTP/1.1":                   "OPTIONS",
		"PUT\t/x\tHTTP/2 ":                     "PUT",
		"MAIL FROM:<a@example.com>":            "",
		"RCPT TO:<b@example.net> NOTIFY=NEVER": "",
		"EHLO client.example":                  "",
		"NOOP HTTP/1.1":                        "",
		"NOOP a b HTTP/1.1":                    "",
		"GETX / HTTP":                          "",
		"":                                     "",
	} {
		verb, ok := httpRequest(line)
		if verb != want || ok != (want != "") {
			t.Errorf("httpRequest(%q) = %q, %v; want %q", line, verb, ok, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		httpRequest("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME")
	}); n != 0 {
		t.Errorf("httpRequest allocates %v times for a MAIL command", n)
	}
}
