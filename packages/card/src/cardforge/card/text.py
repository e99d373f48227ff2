"""The card's fixed prose, English and Chinese. Numbers never live here: they come from the runs.

Keys are shared by both languages so a section renders the same tables under either set of headings.
"""

from __future__ import annotations

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "lang": "🇬🇧 English",
        "intro": "{title} is `{base}` fine-tuned with LoRA on ReAct trajectories of the teacher `{teacher}` "
                 "(thinking {thinking}){steps}. It distills a way of reasoning and of calling tools, not knowledge: the goal is to learn how to "
                 "think a problem through and converge on an answer, not to raise the capability ceiling.",
        "training": "Training details",
        "base": "Base", "method": "Method", "optim": "Optimizer", "length": "Length", "teacher": "Teacher",
        "data": "Data", "tools": "Tool results", "merge": "Merge", "loss": "Loss",
        "accepted": "accepted", "trained_tokens": "trained tokens", "final": "final", "paired": "paired",
        "tools_simulate": "SIMULATED — a model role-plays the runtime and writes each observation; nothing is "
                          "executed. Observations are masked out of the loss, so the model learns its own reasoning "
                          "and tool calls, not the invented outputs.",
        "tools_execute": "EXECUTED — every tool call runs in a real sandbox and its real output is the observation"
                         "{judge}. Observations are masked out of the loss.",
        "judge_on": "; a judge keeps only trajectories that actually solved the task (rejection sampling)",
        "attribution": "Attribution (the method is not original: it combines published techniques)",
        "evaluation": "Evaluation: distill vs base, same harness",
        "step_merged": ", merged back into BF16",
        "step_mtp_kept": " with the base model's MTP head kept",
        "step_mtp_retrained": ", its MTP head retrained on the distilled model's own continuations",
        "step_quant": ", then quantized",
        "served_same": "Both models were served as {fmt} with speculation {spec} and the same sampling, so the only "
                       "difference is the distillation {ref}.",
        "served_differ": "⚠️ The models were served at different formats (distill {distill}, base {base}; speculation "
                         "{spec}): the delta mixes distillation with quantization {ref}.",
        "served_unknown": "Served formats: distill {distill}, base {base}; speculation {spec} {ref}.",
        "eval_method": "Accuracy with Wilson 95% CI; the delta is paired over the same questions (bootstrap 95% CI, "
                       "McNemar exact p).",
        "acc_head": "| benchmark | distill | base | Δ distill − base | McNemar p | source |",
        "finish": "finish_reason per question (stop = converged, length = hit max_tokens, error = transport)",
        "fin_head": "| benchmark · model | stop | length | error | other | parse fail | median tokens | source |",
        "suite_note": "⚠️ `{suite}`, as the eval stage recorded it: {note} {ref}",
        "delta_plot": "accuracy delta, distill − base",
        "mtp": "MTP (multi-token prediction) single-stream speed",
        "mtp_lead": "llama-server with `--spec-type draft-mtp`, greedy, one slot, median over {repeats} repeats {ref}. "
                    "tok/s is "
                    "absolute for the machine that ran the bench; speedup is against speculation off in the "
                    "same run. Greedy speculative decoding only accepts the target's own argmax token, so it does "
                    "not change what is generated.",
        "mtp_head": "| tier · prompts · n-max | tok/s | speedup | accept rate | mean accept length | source |",
        "mtp_plot": "MTP speedup and accept rate vs n-max",
        "mtp_retrain": "MTP head retrained on the distilled distribution",
        "mtp_retrain_lead": "The base's grafted MTP head predicts the distilled model poorly; `cardforge.train.mtp` "
                            "retrained it ({steps} steps, trunk frozen) on the distilled model's own continuations "
                            "of {prompts} distillation prompts {ref}. Offline: teacher-forced drafts on held-out "
                            "prompts, chained as llama.cpp drafts at n-max {n}.",
        "mtp_offline_head": "| head | next-next token accuracy | draft accept rate | mean accept length | source |",
        "mtp_online_lead": "Online, side by side in one run: llama-server `--spec-type draft-mtp` with each head, "
                           "both as {tier} GGUF, greedy; speedup against speculation off {ref}.",
        "quant": "Per-quant files: size, fidelity, MTP speed",
        "quant_lead": "KLD and perplexity are against the BF16 GGUF on {kld_on} {ref}.",
        "kld_held": "held-out text",
        "kld_calib": "the calibration text (too few texts to hold any out)",
        "ppl_random": "Reading PPL on an embedded stand-in (`{model}`, `model.embedded=true`): perplexity is exp(mean "
                      "negative log-likelihood), so a model that predicts uniformly over its vocabulary scores the "
                      "vocabulary size; values of that order (the randomly initialised tiny default) say nothing "
                      "about quality, while KLD against BF16 still orders the files {ref}.",
        "quant_mtp_lead": "MTP columns: coding prompts at n-max = {n}, the served `serve.mtp.n_max` {ref}.",
        "quant_mtp_lead_other": "MTP columns: coding prompts at n-max = {n}, the largest n-max benched (the "
                                "served `serve.mtp.n_max` = {want} was not benched) {ref}.",
        "not_benched": "— in the MTP columns: that file was not in the speed bench.",
        "quant_head": "| file | size GB | size GiB | KLD vs BF16 | PPL | tok/s spec off | tok/s MTP | speedup "
                      "| accept | source |",
        "gib": "📏 GB vs GiB: sizes are decimal GB (10⁹ bytes) and binary GiB (2³⁰ bytes). GPU memory is built in "
               "GiB but sold as \"GB\", so a file runs without CPU offload when its GiB size is below the card's "
               "nominal number, with room left for the KV cache.",
        "gib_example": "Example: `{key}` is {gb} GB = {gib} GiB {ref}.",
        "protocol": "Eval protocol",
        "protocol_text": "thinking {thinking}; temperature {temperature}, top_p {top_p}; max_tokens {max_tokens}; "
                         "streaming {stream}; concurrency {concurrency}; read timeout {timeout} s; seed {seed} "
                         "{ref}. The same settings apply to every compared model.",
        "limitations": "Limitations",
        "lim_style": "It distills a thinking style, not capability: supervised fine-tuning on a teacher's "
                     "outputs cannot raise the knowledge ceiling.",
        "lim_simulate": "Tool results in the training data are simulated, not executed (`data.tool_results="
                        "simulate`). A role-played runtime can be wrong — it may report \"tests passed\" for code "
                        "that would crash — so some trajectories show success that never happened, and the model "
                        "may pick up a habit of assuming tool outputs. Masking the observations out of the loss "
                        "limits this but does not remove it. Rejection sampling cannot help here either: it filters "
                        "by real outcomes, and a simulated run has none. The remedy is `data.tool_results=execute` "
                        "(real sandbox) with `data.judge=true`.",
        "lim_execute": "Tool results in the training data come from real execution in a sandbox "
                       "(`data.tool_results=execute`){judge}. The sandbox is not the user's environment: "
                       "network, packages and files differ, so tool behaviour at inference can still surprise.",
        "lim_execute_judge": ", and a judge kept only trajectories that solved their task",
        "lim_tiny": "The base here is `{model}`, an embedded stand-in built locally (`model.embedded=true`): its "
                    "numbers show that the pipeline measures correctly, not how good a model is.",
        "embedded": ", embedded: built locally, no download",
        "slower_note": "A speedup below one means a draft cycle cost more than the tokens it saved: llama.cpp "
                       "computes full logits at every draft step, so where the LM head is most of a decode step "
                       "(a small trunk under a large vocabulary) speculation cannot pay off, even when every draft "
                       "is accepted {ref}.",
        "release_note": "The vLLM / SGLang commands point at `{path}`, the folder `make release EXP={experiment}` "
                        "assembles (the merged checkpoint with this card): run it first, or serve the published repo.",
        "files": "Files",
        "f_merged": "BF16 merged safetensors with the MTP head (SGLang / vLLM / transformers)",
        "f_gguf": "GGUF (llama.cpp; add `--spec-type draft-mtp` for MTP speculation)",
        "f_dir": "checkpoint directory (vLLM / SGLang)",
        "f_plots": "plots next to this card",
        "inference": "Inference",
        "inference_lead": "thinking {thinking}; sample with temperature {temperature}, top_p {top_p} (not greedy: "
                          "thinking models loop) {ref}. Commands generated from the serve config:",
        "sources": "Sources (MLflow runs)",
        "sources_lead": "Every number above carries the short id of the MLflow run that recorded it. Pipeline run "
                        "`{parent}`; stage runs:",
        "reused": "skipped as unchanged, result from this earlier run",
        "not_measured": "> **Not measured in this run** — no finished `{stage}` run under pipeline run `{parent}`. "
                        "Nothing is shown rather than numbers from elsewhere; run the stage "
                        "(`make {stage} EXP={experiment}` or `make reproduce`) and compile the card again.",
        "no_rows": "> **Not measured in this run** — the `{stage}` run `{run}` recorded no {what}.",
    },
    "zh": {
        "lang": "🇨🇳 中文",
        "intro": "{title}:以 `{base}` 为基座,用 LoRA 在 teacher `{teacher}`(thinking {thinking})的 ReAct 轨迹上"
                 "蒸馏{steps}。蒸的是思考与调用工具的方式,不是知识:目标是学会"
                 "「怎么想、怎么收口」,不是抬高能力上限。",
        "training": "训练配置(如实披露)",
        "base": "基座", "method": "方法", "optim": "优化", "length": "训练长度", "teacher": "Teacher",
        "data": "数据", "tools": "工具结果", "merge": "合并", "loss": "损失",
        "accepted": "条被接受", "trained_tokens": "参与训练的 token", "final": "最终", "paired": "对配对",
        "tools_simulate": "模拟 —— 由一个模型扮演运行环境编写每条执行结果,并未真正执行。训练时这些结果不计入损失,"
                          "模型只学自己的思考与工具调用,不学编出来的输出。",
        "tools_execute": "真实执行 —— 每次工具调用都在真实沙箱里运行,观察到的是真实输出{judge}。训练时这些结果不计入损失。",
        "judge_on": ";判官只保留真正完成任务的轨迹(拒绝采样)",
        "attribution": "方法非自创,是公开技术的组合(如实归因)",
        "evaluation": "评测:蒸馏 vs 原版,同一 harness",
        "step_merged": ",合并回 BF16",
        "step_mtp_kept": "并保留基座原生 MTP 头",
        "step_mtp_retrained": ",MTP 头在蒸馏模型自己的续写上重训",
        "step_quant": ",再量化",
        "served_same": "两个模型都以 {fmt} 服务,投机解码 {spec},采样相同,唯一变量是是否蒸馏 {ref}。",
        "served_differ": "⚠️ 两个模型的服务格式不同(蒸馏 {distill},原版 {base};投机解码 {spec}):Δ 混入了量化的影响 {ref}。",
        "served_unknown": "服务格式:蒸馏 {distill},原版 {base};投机解码 {spec} {ref}。",
        "eval_method": "准确率附 Wilson 95% 置信区间;Δ 为同题配对(bootstrap 95% 区间、McNemar 精确 p)。",
        "acc_head": "| 基准 | 蒸馏 | 原版 | Δ 蒸馏 − 原版 | McNemar p | 来源 |",
        "finish": "逐题 finish_reason(stop = 收口,length = 撞 max_tokens,error = 传输错误)",
        "fin_head": "| 基准 · 模型 | stop | length | error | 其他 | 解析失败 | 中位 token 数 | 来源 |",
        "suite_note": "⚠️ `{suite}`,评测阶段的原始记录:{note} {ref}",
        "delta_plot": "准确率差值(蒸馏 − 原版)",
        "mtp": "MTP(多 token 预测)单流加速",
        "mtp_lead": "llama-server `--spec-type draft-mtp`,贪心、单槽、重复 {repeats} 次取中位数 {ref}。tok/s 为跑测机器上的绝对值;"
                    "加速比对比同一次运行中关闭投机的速度。贪心投机解码只接受目标模型自己的 argmax token,不改变生成内容。",
        "mtp_head": "| 档 · prompt · n-max | tok/s | 加速比 | 接受率 | 平均接受长度 | 来源 |",
        "mtp_retrain": "在蒸馏分布上重训的 MTP 头",
        "mtp_retrain_lead": "从基座嫁接来的 MTP 头对蒸馏后模型预测较弱;`cardforge.train.mtp` 冻结主干,用蒸馏模型自己对 "
                            "{prompts} 条蒸馏提示的续写重训了它({steps} 步){ref}。离线:留出提示上的 teacher-forcing "
                            "草稿,按 llama.cpp 在 n-max {n} 时的链式方式计算。",
        "mtp_offline_head": "| 头 | 下下个 token 准确率 | 草稿接受率 | 平均接受长度 | 来源 |",
        "mtp_online_lead": "在线(同一次运行并排测):llama-server `--spec-type draft-mtp` 分别加载两个头(均为 {tier} GGUF),"
                           "贪心;加速比相对于关闭推测解码 {ref}。",
        "mtp_plot": "MTP 加速比与接受率随 n-max 的变化",
        "quant": "各量化档:体积、保真度、MTP 速度",
        "quant_lead": "KLD 与困惑度均相对 BF16 GGUF,在{kld_on}上测得 {ref}。",
        "kld_held": "留出文本",
        "kld_calib": "校准文本(文本太少,无法留出)",
        "ppl_random": "内置替身(`{model}`,`model.embedded=true`)上的 PPL 怎么读:困惑度是平均负对数似然的指数,在词表上"
                      "均匀预测的模型得分等于词表大小;这个量级的值(随机初始化的微型默认模型)不说明质量,而相对 BF16 的 KLD "
                      "仍能给各文件排序 {ref}。",
        "quant_mtp_lead": "MTP 列:编码类 prompt,n-max = {n},即服务配置的 `serve.mtp.n_max` {ref}。",
        "quant_mtp_lead_other": "MTP 列:编码类 prompt,n-max = {n},测速中最大的 n-max(服务配置的 `serve.mtp.n_max` = "
                                "{want} 未测){ref}。",
        "not_benched": "MTP 列中的 —:该文件未参与测速。",
        "quant_head": "| 文件 | 体积 GB | 体积 GiB | KLD(对 BF16) | PPL | 关投机 tok/s | MTP tok/s | 加速比 | 接受率 | 来源 |",
        "gib": "📏 GB vs GiB:体积以十进制 GB(10⁹ 字节)和二进制 GiB(2³⁰ 字节)给出。显存按 GiB 造却标 \"GB\","
               "所以文件的 GiB 数小于显卡标称数字(并留出 KV cache 空间)即可不 offload。",
        "gib_example": "例:`{key}` 为 {gb} GB = {gib} GiB {ref}。",
        "protocol": "评测口径 / Eval protocol",
        "protocol_text": "thinking {thinking};temperature {temperature},top_p {top_p};max_tokens {max_tokens};"
                         "流式 {stream};并发 {concurrency};读超时 {timeout} 秒;seed {seed} {ref}。所有对比模型同口径。",
        "limitations": "局限 / Limitations",
        "lim_style": "蒸的是思维方式,不是能力:在 teacher 输出上做监督微调抬不高知识天花板。",
        "lim_simulate": "训练数据中的工具结果是模拟的,不是真跑的(`data.tool_results=simulate`)。扮演的运行环境可能出错"
                        "——比如对真跑会崩的代码报「测试通过」——于是部分轨迹里的成功并未真正发生,模型可能学到臆测工具返回值"
                        "的习惯。结果不计入损失能减轻但不能消除这一点。拒绝采样在这里也无从下手:它按真实结果筛选,而模拟没有"
                        "真实结果。解决办法是 `data.tool_results=execute`(真沙箱)加 `data.judge=true`。",
        "lim_execute": "训练数据中的工具结果来自沙箱中的真实执行(`data.tool_results=execute`){judge}。沙箱不等于用户环境:"
                       "网络、软件包与文件都不同,推理时工具行为仍可能出乎意料。",
        "lim_execute_judge": ",且判官只保留了完成任务的轨迹",
        "lim_tiny": "这里的基座是 `{model}`,本地构建的内置替身(`model.embedded=true`):其数字说明流水线测得正确,"
                    "不代表模型好坏。",
        "embedded": ",内置:本地构建,无需下载",
        "slower_note": "加速比低于一表示一轮草稿的开销超过它省下的 token:llama.cpp 每个草稿步都计算完整 logits,"
                       "当 LM 头占解码步的大部分(小主干、大词表)时,即使草稿全被接受,投机解码也无法回本 {ref}。",
        "release_note": "vLLM / SGLang 命令指向 `{path}`,即 `make release EXP={experiment}` 组装的目录(合并后的权重加本卡片):"
                        "请先运行它,或直接使用已发布的仓库。",
        "files": "文件 / Files",
        "f_merged": "BF16 合并权重(含 MTP 头;SGLang / vLLM / transformers)",
        "f_gguf": "GGUF(llama.cpp;加 `--spec-type draft-mtp` 启用 MTP 投机)",
        "f_dir": "权重目录(vLLM / SGLang)",
        "f_plots": "与本卡片同目录的图",
        "inference": "推理 / Inference",
        "inference_lead": "thinking {thinking};采样 temperature {temperature},top_p {top_p}(勿用贪心:思考模型会"
                          "循环){ref}。以下命令由 serve 配置生成:",
        "sources": "来源(MLflow runs)",
        "sources_lead": "上文每个数字都附有记录它的 MLflow run 短 id。流水线 run `{parent}`;各阶段 run:",
        "reused": "因未变化而跳过,结果来自这次较早的 run",
        "not_measured": "> **本次运行未测量** —— 流水线 run `{parent}` 下没有已完成的 `{stage}` run。宁缺毋滥,不引用别处的"
                        "数字;请运行该阶段(`make {stage} EXP={experiment}` 或 `make reproduce`)后重新生成卡片。",
        "no_rows": "> **本次运行未测量** —— `{stage}` run `{run}` 没有记录{what}。",
    },
}
