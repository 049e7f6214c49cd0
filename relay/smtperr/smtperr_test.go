package smtperr_test

import (
	"io"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailhop/mailhop/relay/smtperr"
)

func TestSMTPErrClassify(t *testing.T) {
	for _, tc := range []struct {
		e    smtperr.Error
		temp bool
		st   string
	}{
		{smtperr.Error{Code: 550, Enhanced: "5.1.1"}, false, "5.1.1"},
		{smtperr.Error{Code: 451, Enhanced: "5.1.1"}, true, "4.0.0"},
		{smtperr.Error{Code: 0, Enhanced: "5.1.10"}, false, "5.1.10"},
		{smtperr.Error{Code: 0, Enhanced: "4.4.7"}, true, "4.4.7"},
		{smtperr.Error{}, true, "4.0.0"},
	} {
		if tc.e.Temporary() != tc.temp || tc.e.Status() != tc.st {
			t.Errorf("%+v: temporary %v status %s", tc.e, tc.e.Temporary(), tc.e.Status())
		}
	}
	if e := smtperr.Classify(io.EOF); !e.Temporary() {
		t.Error("an unknown error must be temporary")
	}
}

// go-smtp's client takes any three numbers for an enhanced status; one that
// is no RFC 3463 code stays in the text and never becomes a DSN's Status.
func TestFromSMTPInvalidEnhanced(t *testing.T) {
	for _, tc := range []struct {
		code      smtp.EnhancedCode
		enh, msg  string
		reply, st string
	}{
		{smtp.EnhancedCode{5, 1, 1}, "5.1.1", "no", "550 5.1.1 no", "5.1.1"},
		{smtp.EnhancedCode{5, 1234, 1}, "", "5.1234.1 no", "550 5.1234.1 no", "5.0.0"},
		{smtp.EnhancedCode{-5, 1, 1}, "", "-5.1.1 no", "550 -5.1.1 no", "5.0.0"},
		{smtp.EnhancedCode{7, 0, 0}, "", "7.0.0 no", "550 7.0.0 no", "5.0.0"},
	} {
		e := smtperr.FromSMTP(&smtp.SMTPError{Code: 550, EnhancedCode: tc.code, Message: "no"})
		if e.Enhanced != tc.enh || e.Msg != tc.msg || e.Error() != tc.reply || e.Status() != tc.st {
			t.Errorf("%v: %+v, status %s; want enhanced %q, text %q, status %s", tc.code, e, e.Status(), tc.enh, tc.msg, tc.st)
		}
	}
	if st := (&smtperr.Error{Code: 550, Enhanced: "5.1234.1"}).Status(); st != "5.0.0" {
		t.Errorf("status of enhanced 5.1234.1: %s, want 5.0.0", st)
	}
}
