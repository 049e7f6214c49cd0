package idn

import "testing"

func TestALabel(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"example.com", "example.com", true},
		{"Example.COM", "example.com", true},
		{"example.com.", "example.com.", true},
		{"Bücher.example", "xn--bcher-kva.example", true},
		{"BÜCHER.example", "xn--bcher-kva.example", true},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", true},
		{"straße.test", "xn--strae-oqa.test", true},
		{"\u0301abc.example", "", false}, // a label that starts with a combining mark: no valid IDN
		// Invalid UTF-8 (a percent-decoded "%FF") is no name; it was
		// encoded as U+FFFD, "xn--bcher-lm43a.example", a name IDNA
		// itself refuses to decode.
		{"b\xffcher.example", "", false},
		{"b\ufffdcher.example", "", false},
	} {
		got, err := ALabel(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ALabel(%q) = %q, %v; want %q, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
	if got := Key("\u0301ABC.example"); got != "\u0301abc.example" {
		t.Errorf("Key of an invalid name = %q, want it lower-cased", got)
	}
	if got := Key("Bücher.Example"); got != "xn--bcher-kva.example" {
		t.Errorf("Key(Bücher.Example) = %q", got)
	}
}

func TestALabel_NoAllocationForLowerASCII(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { ALabel("mx.example.com") }); n != 0 {
		t.Errorf("%v allocations for a lower-case ASCII name, want 0", n)
	}
}
