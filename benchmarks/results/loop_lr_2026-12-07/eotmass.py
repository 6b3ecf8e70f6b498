"""Where does the loop's raw-text damage sit? Per-token loss on held-out text, and the probability mass put on
<end_of_turn> / chat tokens, for the CPT adapter vs each loop round."""
import json, sys, torch, math
from kormed.models import load_model_and_tokenizer, pick_runtime
from kormed.precision import autocast
rt = pick_runtime("auto", "auto")
W = "/work/exp/bench/w42"
texts = [json.loads(l)["text"] for l in open(f"{W}/data/medical_test.jsonl")][:6]
adapters = sys.argv[1:]
for ad in adapters:
    model, tok, rt2 = load_model_and_tokenizer(None, adapter=None if ad == "-" else ad, runtime=rt, log=lambda *a: None)
    model.eval()
    eot = tok.convert_tokens_to_ids("<end_of_turn>"); sot = tok.convert_tokens_to_ids("<start_of_turn>")
    tot = 0.0; n = 0; peot = 0.0; psot = 0.0; nl_loss = 0.0; nl_n = 0; renorm = 0.0
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    for t in texts:
        ids = [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"][:511]
        x = torch.tensor([ids])
        with torch.no_grad(), autocast(torch.device("cpu"), rt2.compute_dtype):
            lg = model(input_ids=x, use_cache=False).logits.float()[0, :-1]
        lp = torch.log_softmax(lg, -1)
        tgt = x[0, 1:]
        ll = lp.gather(1, tgt[:, None])[:, 0]
        pe = lp[:, eot].exp(); ps = lp[:, sot].exp()
        tot += -ll.sum().item(); n += len(tgt); peot += pe.sum().item(); psot += ps.sum().item()
        # loss if eot/sot mass were given back proportionally
        renorm += -(ll - torch.log1p(-(pe + ps).clamp(max=0.999))).sum().item()
        m = torch.isin(tgt, torch.tensor(nl))
        nl_loss += -ll[m].sum().item(); nl_n += int(m.sum())
    print(f"{ad[-40:]:>40}: nats/token {tot/n:.4f}  mean p(eot) {peot/n:.4f}  p(sot) {psot/n:.4f}  "
          f"nats/token w/o eot+sot mass {renorm/n:.4f}  newline nats {nl_loss/max(nl_n,1):.3f} ({nl_n})", flush=True)
