//! The hosted payment page: what a buyer sees after the merchant redirects them.

use super::Session;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn checkout(session: &Session) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Paymentwall (simulator)</title></head>
<body style="font-family: sans-serif; max-width: 28em; margin: 3em auto">
<h1>Paymentwall simulator</h1>
<p><b>{product}</b></p>
<p>Amount: <b>{amount} {currency}</b><br>Buyer: {uid}</p>
<form method="post" action="/sim/sessions/{id}/pay"><button type="submit">Pay</button></form>
<form method="post" action="/sim/sessions/{id}/decline"><button type="submit">Decline</button></form>
<p style="color: #777">Session {id}</p>
</body></html>"#,
        product = escape(&session.product_name),
        amount = escape(&session.amount),
        currency = escape(&session.currency),
        uid = escape(&session.uid),
        id = escape(&session.session_id),
    )
}

pub fn result(session: &Session) -> String {
    let (title, link) = match (&session.reference, &session.success_url) {
        (Some(reference), Some(url)) => {
            let url = url.replace("$ref", reference);
            ("Payment complete", format!(r#"<p><a href="{}">Back to the shop</a></p>"#, escape(&url)))
        }
        (Some(_), None) => ("Payment complete", String::new()),
        _ => ("Payment declined", String::new()),
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family: sans-serif; max-width: 28em; margin: 3em auto\"><h1>{title}</h1>{link}</body></html>"
    )
}
