"""The widget URL the official Paymentwall Python SDK (PyPI paymentwall-python) builds, for paygate's tests.

Reads one JSON object on stdin:
  {"base_url": "http://127.0.0.1:1234",           the API's origin (the SDK's is api.paymentwall.com)
   "app_key": "...", "secret_key": "...",
   "uid": "...", "widget": "p10",
   "product": {"id": "...", "amount": 9.99, "currency": "USD", "name": "...",
               "type": "fixed" | "subscription", "period_length": 1, "period_type": "month", "recurring": true},
   "extra_params": {"email": "...", "customer[firstname]": "...", "sign_version": "3", ...}}
and prints {"url": "..."}: the Digital Goods widget URL of `Widget(uid, widget, [product], extra_params).get_url()`.

The SDK (1.0.9) takes nested parameters as flat `customer[...]` / `history[...]` keys in extra_params: it
signs a dict's keys sorted as whole strings and writes a list as `name[0]=...`; a dict value it does not
expand. Usage: python3 paymentwall_sdk_widget.py < request.json
"""

import json
import sys

from paymentwall import Paymentwall, Product, Widget


def main():
    request = json.load(sys.stdin)
    Paymentwall.set_api_type(Paymentwall.API_GOODS)
    Paymentwall.set_app_key(request["app_key"])
    Paymentwall.set_secret_key(request["secret_key"])
    p = request["product"]
    product = Product(
        product_id=p["id"],
        amount=p["amount"],
        currency_code=p["currency"],
        name=p["name"],
        product_type=p.get("type", Product.TYPE_FIXED),
        period_length=p.get("period_length", 0),
        period_type=p.get("period_type"),
        recurring=p.get("recurring", False),
    )
    widget = Widget(request["uid"], request["widget"], [product], request["extra_params"])
    widget.BASE_URL = request["base_url"].rstrip("/") + "/api"
    url = widget.get_url()
    errors = Paymentwall.get_errors()
    if errors:
        sys.exit("the SDK reported: " + "; ".join(errors))
    print(json.dumps({"url": url, "sdk_version": Paymentwall.VERSION}))


if __name__ == "__main__":
    main()
